package agent

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/opencontainers/runtime-spec/specs-go"

	pb "github.com/cova-project/cova/protocols/grpc"
)

// pseudoFilesystems are the mount types an OCI mount may use without a
// storage: kernel filesystems with no backing device or host path.
var pseudoFilesystems = map[string]bool{
	"proc": true, "sysfs": true, "tmpfs": true, "devpts": true, "mqueue": true,
	"cgroup": true, "cgroup2": true,
}

// isBind reports whether m is a bind mount (by type or by option, as runc
// decides).
func isBind(m specs.Mount) bool {
	return m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

// under reports whether p is dir or lies below it (both clean and absolute).
func under(p, dir string) bool {
	dir = strings.TrimSuffix(dir, "/")
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// checkMounts confines the OCI mounts of a container when
// MountSourcePrefixes is set (always as PID 1), whatever the policy says:
// kata's agent mounts whatever the host names (its own docs: "does not
// validate mount requests"), so a bind of the guest's / or of the CDH's
// secrets would otherwise be one CreateContainer away. Bind sources must be
// clean absolute paths under an allowed prefix or a storage mount point of
// the same request; any other mount must be a pseudo filesystem, never a
// device or a host-chosen filesystem type.
func (a *Agent) checkMounts(s *specs.Spec, storages []*pb.Storage) error {
	if len(a.opts.MountSourcePrefixes) == 0 {
		return nil
	}
	var storagePoints []string
	for _, st := range storages {
		if st != nil {
			storagePoints = append(storagePoints, path.Clean(st.MountPoint))
		}
	}
	for i, m := range s.Mounts {
		field := func(f string) string { return fmt.Sprintf("OCI.Mounts[%d].%s", i, f) }
		if m.Destination == "" || strings.ContainsRune(m.Destination, 0) {
			return invalid(field("destination"), "must be a non-empty path")
		}
		if !isBind(m) {
			if !pseudoFilesystems[m.Type] {
				return invalid(field("type"), "%q mounted at %s is not a pseudo filesystem; block devices and host filesystems come as storages", m.Type, m.Destination)
			}
			continue
		}
		src := m.Source
		if !path.IsAbs(src) || path.Clean(src) != src || strings.ContainsRune(src, 0) {
			return invalid(field("source"), "bind source %q must be an absolute clean path", src)
		}
		ok := false
		for _, p := range a.opts.MountSourcePrefixes {
			ok = ok || under(src, p)
		}
		for _, p := range storagePoints {
			ok = ok || under(src, p)
		}
		if !ok {
			return invalid(field("source"), "bind source %q is outside %v and the request's storages", src, a.opts.MountSourcePrefixes)
		}
	}
	return nil
}

// Annotations Kata's runtime derives a guest-pull storage's source from.
var imageNameAnnotations = []string{"io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName"}

// checkGuestPullSource binds the image a guest pull fetches to the image
// the pod spec names: the shim takes an image_guest_pull storage's source
// from the container's image-name annotation, so a storage that names
// another image is a host that swapped the workload (kata issue #11354:
// kata's rules never look at the source). Policies that pin the image
// through the annotation therefore pin the pull too. The sandbox's pause
// storage, whose source is the literal "pause", is exempt.
func checkGuestPullSource(s *specs.Spec, storages []*pb.Storage) error {
	var want string
	for _, k := range imageNameAnnotations {
		if v := s.Annotations[k]; v != "" {
			want = v
			break
		}
	}
	if want == "" {
		return nil
	}
	for i, st := range storages {
		if st == nil || st.Driver != "image_guest_pull" || st.Source == "pause" {
			continue
		}
		if st.Source != want {
			return invalid(fmt.Sprintf("storages[%d].source", i), "image %q differs from the container's image-name annotation %q", st.Source, want)
		}
	}
	return nil
}
