package mount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// pciPath is a parsed kata PCI path: the slot/function of each bridge on the
// way from a root complex to the device, e.g. "02/03" = device 03 behind the
// bridge at 02 on root complex 00.
type pciPath struct {
	rootComplex string // two lowercase hex digits
	slots       []string
}

const maxPCIDepth = 8

// pxbRootBusMin is the lowest bus number the runtime gives pxb-pcie NUMA
// root complexes; a first element at or above it names the root complex.
const pxbRootBusMin = 0x20

var hexRE = regexp.MustCompile(`^[0-9a-fA-F]{1,2}$`)

// parsePCIPath parses "SS[.F]/SS[.F]/..." with an optional leading NUMA root
// complex ("20/00/02").
func parsePCIPath(s string) (pciPath, error) {
	p := pciPath{rootComplex: "00"}
	parts := strings.Split(s, "/")
	if len(parts) >= 3 && hexRE.MatchString(parts[0]) {
		if v, _ := strconv.ParseUint(parts[0], 16, 8); v >= pxbRootBusMin {
			p.rootComplex = fmt.Sprintf("%02x", v)
			parts = parts[1:]
		}
	}
	if len(parts) == 0 || len(parts) > maxPCIDepth {
		return p, invalid("source", "PCI path %q must have 1 to %d elements", s, maxPCIDepth)
	}
	for _, part := range parts {
		slot, fn, hasFn := strings.Cut(part, ".")
		if !hexRE.MatchString(slot) {
			return p, invalid("source", "PCI path %q: bad slot %q", s, slot)
		}
		sv, _ := strconv.ParseUint(slot, 16, 8)
		if sv > 0x1f {
			return p, invalid("source", "PCI path %q: slot %q out of range", s, slot)
		}
		var fv uint64
		if hasFn {
			if len(fn) != 1 || !hexRE.MatchString(fn) {
				return p, invalid("source", "PCI path %q: bad function %q", s, fn)
			}
			fv, _ = strconv.ParseUint(fn, 16, 8)
			if fv > 7 {
				return p, invalid("source", "PCI path %q: function %q out of range", s, fn)
			}
		}
		p.slots = append(p.slots, fmt.Sprintf("%02x.%x", sv, fv))
	}
	return p, nil
}

var (
	busRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}$`)
	bdfRE = regexp.MustCompile(`^([0-9a-f]{4}:[0-9a-f]{2}):[0-9a-f]{2}\.[0-7]$`)
)

// errNotYet marks a device that has not (or not completely) appeared yet.
var errNotYet = errors.New("not present yet")

// pciDeviceDir walks sysfs from the root complex along p and returns the
// sysfs directory of the final device.
func pciDeviceDir(sysRoot string, p pciPath) (string, error) {
	dir := filepath.Join(sysRoot, "devices", "pci0000:"+p.rootComplex)
	bus := "0000:" + p.rootComplex
	for i, slot := range p.slots {
		dir = filepath.Join(dir, bus+":"+slot)
		if i == len(p.slots)-1 {
			break
		}
		next, err := bridgeBus(dir)
		if err != nil {
			return "", err
		}
		bus = next
	}
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("%w: %v", errNotYet, err)
	}
	return dir, nil
}

// bridgeBus returns the secondary bus ("0000:01") of the bridge at dir.
func bridgeBus(dir string) (string, error) {
	entries, err := os.ReadDir(filepath.Join(dir, "pci_bus"))
	if err == nil {
		if len(entries) != 1 || !busRE.MatchString(entries[0].Name()) {
			return "", fmt.Errorf("%w: bridge %s: expected one bus in pci_bus, found %d", errNotYet, dir, len(entries))
		}
		return entries[0].Name(), nil
	}
	// No pci_bus directory: infer the bus from the child devices.
	entries, err = os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("%w: %v", errNotYet, err)
	}
	bus := ""
	for _, e := range entries {
		m := bdfRE.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		if bus != "" && bus != m[1] {
			return "", fmt.Errorf("bridge %s: devices on several buses", dir)
		}
		bus = m[1]
	}
	if bus == "" {
		return "", fmt.Errorf("%w: bridge %s: no downstream devices", errNotYet, dir)
	}
	return bus, nil
}

// blockName returns the only block device name in dir (a sysfs "block"
// directory), or errNotYet.
func blockName(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("%w: %v", errNotYet, err)
	}
	switch len(entries) {
	case 0:
		return "", fmt.Errorf("%w: %s is empty", errNotYet, dir)
	case 1:
	default:
		return "", fmt.Errorf("%s holds %d block devices, want 1", dir, len(entries))
	}
	name := entries[0].Name()
	if name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return "", fmt.Errorf("bad block device name %q", name)
	}
	return name, nil
}

// virtioBlockDir finds <dev>/virtio*/block of a virtio-blk PCI device.
func virtioBlockDir(devDir string) (string, error) {
	matches, err := filepath.Glob(filepath.Join(devDir, "virtio*", "block"))
	if err != nil {
		return "", err
	}
	switch len(matches) {
	case 0:
		return "", fmt.Errorf("%w: no virtio block device under %s", errNotYet, devDir)
	case 1:
		return matches[0], nil
	default:
		return "", fmt.Errorf("%d virtio block devices under %s", len(matches), devDir)
	}
}

// deviceNode checks that devRoot/name is the block device sysfs describes
// in sysDir/dev ("major:minor") and returns its path.
func deviceNode(devRoot, sysDir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(sysDir, "dev"))
	if err != nil {
		return "", fmt.Errorf("%w: %v", errNotYet, err)
	}
	majS, minS, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	maj, err1 := strconv.ParseUint(majS, 10, 32)
	minr, err2 := strconv.ParseUint(minS, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return "", fmt.Errorf("bad device number %q in %s", b, sysDir)
	}
	node := filepath.Join(devRoot, name)
	var st unix.Stat_t
	if err := unix.Lstat(node, &st); err != nil {
		return "", fmt.Errorf("%w: %v", errNotYet, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", fmt.Errorf("%s is not a block device", node)
	}
	if unix.Major(st.Rdev) != uint32(maj) || unix.Minor(st.Rdev) != uint32(minr) {
		return "", fmt.Errorf("%s is %d:%d, sysfs says %d:%d", node, unix.Major(st.Rdev), unix.Minor(st.Rdev), maj, minr)
	}
	return node, nil
}

var scsiAddrRE = regexp.MustCompile(`^([0-9]{1,5}):([0-9]{1,5})$`)

// ResolveDevice waits for the block device a storage or device source names
// and returns its node under DevRoot: driver "blk" takes a PCI path ("02/03"),
// driver "scsi" a SCSI address ("0:0"). A device that does not appear within
// HotplugTimeout yields an error wrapping errdefs.ErrNotFound.
func (m *Manager) ResolveDevice(ctx context.Context, driver, source string) (string, error) {
	var probe func() (string, error)
	switch driver {
	case DriverBlk:
		p, err := parsePCIPath(source)
		if err != nil {
			return "", err
		}
		probe = func() (string, error) {
			dev, err := pciDeviceDir(m.sysRoot, p)
			if err != nil {
				return "", err
			}
			blockDir, err := virtioBlockDir(dev)
			if err != nil {
				return "", err
			}
			name, err := blockName(blockDir)
			if err != nil {
				return "", err
			}
			return deviceNode(m.devRoot, filepath.Join(blockDir, name), name)
		}
	case DriverScsi:
		sm := scsiAddrRE.FindStringSubmatch(source)
		if sm == nil {
			return "", invalid("source", "SCSI address %q must be SCSI_ID:LUN", source)
		}
		m.scanSCSI(ctx, sm[1], sm[2])
		blockDir := filepath.Join(m.sysRoot, "bus", "scsi", "devices", "0:0:"+sm[1]+":"+sm[2], "block")
		probe = func() (string, error) {
			name, err := blockName(blockDir)
			if err != nil {
				return "", err
			}
			return deviceNode(m.devRoot, filepath.Join(blockDir, name), name)
		}
	default:
		return "", invalid("driver", "no block device resolution for driver %q", driver)
	}
	return m.waitDevice(ctx, source, probe)
}

// scanSCSI asks every SCSI host to scan for the target (kata does the same);
// failures only delay discovery, so they are logged.
func (m *Manager) scanSCSI(ctx context.Context, id, lun string) {
	hostsDir := filepath.Join(m.sysRoot, "class", "scsi_host")
	hosts, err := os.ReadDir(hostsDir)
	if err != nil {
		m.log.DebugContext(ctx, "no SCSI hosts to scan", "error", err)
		return
	}
	for _, h := range hosts {
		scan := filepath.Join(hostsDir, h.Name(), "scan")
		if err := os.WriteFile(scan, []byte("0 "+id+" "+lun), 0); err != nil {
			m.log.DebugContext(ctx, "SCSI scan failed", "host", h.Name(), "error", err)
		}
	}
}

// waitDevice polls probe until it succeeds, fails hard, or HotplugTimeout
// passes.
func (m *Manager) waitDevice(ctx context.Context, source string, probe func() (string, error)) (string, error) {
	deadline := time.NewTimer(m.hotplugTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(m.pollInterval)
	defer tick.Stop()
	for {
		dev, err := probe()
		if err == nil {
			return dev, nil
		}
		if !errors.Is(err, errNotYet) {
			return "", fmt.Errorf("resolving device %q: %w", source, err)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for device %q: %w", source, ctx.Err())
		case <-deadline.C:
			return "", fmt.Errorf("device %q did not appear within %v (%v): %w", source, m.hotplugTimeout, err, errdefs.ErrNotFound)
		case <-tick.C:
		}
	}
}
