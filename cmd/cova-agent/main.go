// Command cova-agent is Cova's in-guest agent: PID 1 of a confidential VM
// that serves the Kata agent API over ttrpc. Run as an ordinary process it
// serves the same API in "host mode" for development (it then never changes
// the machine: no mounts over system paths, no clock, network or power).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter" // C constructor for "init"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/agent"
	"github.com/cova-project/cova/agent/config"
	"github.com/cova-project/cova/agent/container"
	"github.com/cova-project/cova/agent/copyfile"
	"github.com/cova-project/cova/agent/guestpull"
	"github.com/cova-project/cova/agent/network"
	"github.com/cova-project/cova/agent/reaper"
	"github.com/cova-project/cova/agent/sysinit"
	"github.com/cova-project/cova/agent/transport"
	"github.com/cova-project/cova/attester/aaservice"
	"github.com/cova-project/cova/attester/initdata"
	"github.com/cova-project/cova/cdh/kbs"
	"github.com/cova-project/cova/cdh/kms"
	"github.com/cova-project/cova/imagepull"
	"github.com/cova-project/cova/imagepull/registry"
	"github.com/cova-project/cova/mount"
	"github.com/cova-project/cova/protocols/aa"
)

// The libcontainer re-exec seam: "cova-agent init" is a container's init
// (runc init). It must run before anything else.
func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
		os.Exit(1) // Init does not return on success
	}
	// The same binary is the sandbox's pause process: image_guest_pull
	// bind-mounts it at /pause in the pause container's rootfs.
	if filepath.Base(os.Args[0]) == "pause" {
		os.Exit(pause())
	}
}

// pause holds the sandbox's namespaces: it reaps children and exits on
// SIGINT or SIGTERM, like Kubernetes' pause.
func pause() int {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM, unix.SIGCHLD)
	for s := range sigs {
		if s == unix.SIGCHLD {
			for {
				var ws unix.WaitStatus
				if pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil); pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		return 0
	}
	return 0
}

func main() {
	start := time.Now()
	if err := run(start); err != nil {
		fmt.Fprintf(os.Stderr, "cova-agent: %v\n", err)
		if sysinit.IsPID1() {
			// PID 1 must not exit (the kernel would panic): power off instead.
			_ = sysinit.PowerOff(slog.Default())
			select {}
		}
		os.Exit(1)
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

type flags struct {
	insecureRegistries                         stringList
	listen, configFile, root, logLevel, policy string
	initdata                                   string
	version                                    bool
}

func parseFlags(args []string) (flags, error) {
	var f flags
	fs := flag.NewFlagSet("cova-agent", flag.ContinueOnError)
	fs.StringVar(&f.listen, "listen", "", "address to serve on: vsock://CID:PORT or unix:///path (overrides agent.server_addr)")
	fs.StringVar(&f.configFile, "config", "", "agent TOML config file (used instead of the kernel command line)")
	fs.StringVar(&f.configFile, "c", "", "shorthand for --config")
	fs.StringVar(&f.root, "root", "", "state root (host mode default /run/cova; VM: /run)")
	fs.StringVar(&f.logLevel, "log-level", "", "log level (trace, debug, info, warn, error)")
	fs.StringVar(&f.policy, "policy", "", "agent policy (Rego) file (default: policy_file, else the built-in default; host mode only)")
	fs.Var(&f.insecureRegistries, "insecure-registry", "registry HOST[:PORT] reached over plain HTTP (repeatable; host mode only)")
	fs.StringVar(&f.initdata, "initdata", "", "initdata TOML file (aa.toml, cdh.toml, policy.rego) used as if from the initdata device, without hardware binding (host mode only, for development)")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	if fs.NArg() > 0 {
		return f, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return f, nil
}

func run(start time.Time) error {
	f, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if f.version {
		fmt.Printf("cova-agent %s (Kata agent API %s, %s)\n", agent.Version, agent.APIVersion, runtime.Version())
		return nil
	}
	vm := sysinit.IsPID1()
	ph := newPhases(start)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if vm && (f.policy != "" || len(f.insecureRegistries) > 0 || f.initdata != "") {
		// As PID 1 our arguments come from the kernel command line, which
		// the host writes: it must not choose the policy, the configuration
		// or weaken pulls.
		fmt.Fprintln(os.Stderr, "cova-agent: ignoring --policy, --initdata and --insecure-registry as PID 1")
		f.policy, f.insecureRegistries, f.initdata = "", nil, ""
	}

	// Early logger: console, info.
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if vm {
		if err := sysinit.MountBase(ctx, log, sysinit.Options{}); err != nil {
			return fmt.Errorf("mount base filesystems: %w", err)
		}
		if err := sysinit.LoopbackUp(log); err != nil {
			return fmt.Errorf("bring up the loopback link: %w", err)
		}
		ph.mark("mounts")
	}
	lo := config.LoadOptions{ConfigFileFlag: f.configFile}
	if !vm {
		lo.CmdlinePath = os.DevNull // the host's kernel command line is not ours
	} else {
		// As PID 1 our environment comes from the kernel command line, which
		// the host writes: it must not pick the policy file.
		lo.Getenv = func(k string) string {
			if k == config.EnvPolicyFile {
				return ""
			}
			return os.Getenv(k)
		}
	}
	cfg, warns, err := config.Load(ctx, lo)
	if err != nil {
		return err
	}
	ph.mark("config")
	if f.listen != "" {
		cfg.ServerAddr = f.listen
		if err := cfg.Validate(); err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
	}
	level := cfg.LogLevel
	if f.logLevel != "" {
		if level, err = config.ParseLogLevel(f.logLevel); err != nil {
			return fmt.Errorf("--log-level: %w", err)
		}
	}
	base := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	log = base.With("component", "cova-agent")
	slog.SetDefault(log)
	for _, w := range warns {
		log.Warn("config", "warning", w.String())
	}

	stateRoot, kataRoot := "/run/cova", "/run/kata-containers"
	if !vm {
		stateRoot = "/run/cova"
		if f.root != "" {
			stateRoot = f.root
		}
		kataRoot = filepath.Join(stateRoot, "kata-containers")
	}

	rp := reaper.New(base.With("component", "reaper"))
	// Containers need cgroups, listening does not: mount them while the
	// modules load and the listeners start; container rpcs wait for it.
	cgroupsReady := make(chan error, 1)
	if vm {
		if err := sysinit.LoadModules(ctx, log, "/", cfg.KernelModules); err != nil {
			return fmt.Errorf("load kernel modules: %w", err)
		}
		ph.mark("modules")
	} else if err := sysinit.SetSubreaper(); err != nil {
		return fmt.Errorf("become child subreaper: %w", err)
	}
	// Attestation: detect the TEE, check initdata before anything listens
	// (fail closed: any error but "no initdata device" stops the boot),
	// then serve the Attestation Agent API in process.
	primary, additional, err := aaservice.Detect(ctx, os.LookupEnv, base.With("component", "attester"))
	if err != nil {
		return fmt.Errorf("attester: %w", err)
	}
	ph.mark("detect")
	aaOpts := aaservice.StartOptions{Primary: primary, Additional: additional, Logger: base.With("component", "aa")}
	initdataPolicy, cdhTOML := "", ""
	var initdataTOML []byte
	var resources imagepull.ResourceGetter // the KBS, when aa.toml names one
	if vm {
		id, err := initdata.Load(ctx, initdata.Options{Attester: primary, Logger: base.With("component", "initdata")})
		if err != nil {
			return fmt.Errorf("initdata check failed, refusing to serve: %w", err)
		}
		if s, ok := id.AAConfig(); ok {
			if aaOpts.Config, err = aaservice.ParseConfig([]byte(s)); err != nil {
				return fmt.Errorf("initdata aa.toml: %w", err)
			}
		}
		if p, ok := id.Policy(); ok {
			initdataPolicy = p
		}
		cdhTOML, _ = id.CDHConfig()
		if id != nil {
			initdataTOML = id.TOML
		}
		ph.mark("initdata")
	} else {
		if f.initdata != "" {
			// Development: the same documents, unbound (no TEE here).
			b, err := os.ReadFile(f.initdata)
			if err != nil {
				return fmt.Errorf("--initdata: %w", err)
			}
			id, err := initdata.Parse(b)
			if err != nil {
				return fmt.Errorf("--initdata %s: %w", f.initdata, err)
			}
			if s, ok := id.AAConfig(); ok {
				if aaOpts.Config, err = aaservice.ParseConfig([]byte(s)); err != nil {
					return fmt.Errorf("--initdata aa.toml: %w", err)
				}
			}
			initdataPolicy, _ = id.Policy()
			cdhTOML, _ = id.CDHConfig()
			initdataTOML = id.TOML
			log.Warn("initdata from --initdata: NOT bound to any hardware (development)", "file", f.initdata)
		}
		aaOpts.Addr = "unix://" + filepath.Join(stateRoot, "attestation-agent", "attestation-agent.sock")
		aaOpts.EventLogPath = filepath.Join(stateRoot, "attestation-agent", "eventlog")
		aaOpts.WALPath = filepath.Join(stateRoot, "attestation-agent", ".wal_event_entry")
	}
	cdhSet, err := parseCDHSettings(cdhTOML)
	if err != nil {
		return fmt.Errorf("initdata: %w", err)
	}
	if vm {
		cmdline, _ := os.ReadFile(config.DefaultCmdlinePath)
		kbcFallback(base, string(cmdline), os.Getenv, initdataTOML != nil, &aaOpts.Config, &cdhSet)
	}
	if kc, err := newKBSClient(base, aaOpts.Config, cdhSet, primary, additional, initdataTOML); err != nil {
		return err
	} else if kc != nil {
		aaOpts.Tokens = kc
		resources = kbsResources{kc}
	}
	aaSvc, err := aaservice.Start(ctx, aaOpts)
	if err != nil {
		return fmt.Errorf("attestation agent: %w", err)
	}
	ph.mark("aa")
	if err := rp.Start(ctx); err != nil {
		return err
	}
	ptext, psource, err := policySource(cfg.PolicyFile, f.policy, initdataPolicy, vm)
	if err != nil {
		return err
	}
	gate := startPolicy(base.With("component", "policy"), ptext, psource, start)
	measure := measureWith(aaSvc)
	puller, err := newPuller(base.With("component", "imagepull"), kataRoot, f.insecureRegistries, cdhTOML, resources)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the agent binary: %w", err)
	}
	ip, err := parseImagePolicy(cdhTOML)
	if err != nil {
		return fmt.Errorf("initdata: %w", err)
	}
	pullDriver := guestpull.New(puller, measure, self, base.With("component", "guestpull")).
		WithPullOptions(pullOptions(ip, resources, base.With("component", "sigpolicy")))
	pullDriver.WithImageCheck(gate.CheckPulledImage)
	credRoot := kms.DefaultCredentialRoot
	if !vm {
		credRoot = filepath.Join(stateRoot, "cdh", "kbs")
	}
	unseal := newUnsealer(ctx, base, cdhSet, resources, credRoot)
	secure, err := newSecureMount(base, resources, unseal)
	if err != nil {
		return err
	}
	a, err := buildAgent(base, cfg, vm, stateRoot, kataRoot, onceErr(cgroupsReady), gate,
		func(ctx context.Context, op, content string) error {
			return measure(ctx, agent.MeasurementDomain, op, content)
		},
		map[string]mount.Driver{guestpull.DriverName: pullDriver}, secure, unseal,
		func(w io.Writer) { m := puller.Metrics(); m.WritePrometheus(w) }, trustedStore(puller, secure, cfg.SecureStorageIntegrity))
	if err != nil {
		return err
	}
	if err := startCDH(ctx, base, vm, stateRoot, string(cfg.GuestComponentsRestAPI), cdhSet, cdhDeps{
		resources: resources, aa: aaSvc, mounter: secure,
		puller: cdhPuller(puller, pullOptions(ip, resources, base.With("component", "sigpolicy")), measure),
	}, unseal); err != nil {
		return err
	}

	ph.mark("agent")
	listeners, err := listen(ctx, log, cfg)
	if err != nil {
		return err
	}
	ph.mark("listen")
	log.Info("agent listening", "version", agent.Version, "vm", vm, "addrs", addrs(listeners),
		"startup_ms", float64(time.Since(start).Microseconds())/1000, "phases_ms", ph.String())
	if vm {
		go func() {
			t0 := time.Now()
			err := sysinit.MountCgroups(ctx, log, cfg.CgroupV2(), sysinit.Options{})
			if err != nil {
				err = fmt.Errorf("mount cgroups: %w", err)
				log.Error("cgroups unavailable: container rpcs will fail", "err", err)
			} else {
				log.Info("cgroups mounted", "ms", time.Since(t0).Milliseconds())
			}
			cgroupsReady <- err
		}()
	} else {
		cgroupsReady <- nil
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT)
	go func() {
		for s := range sigs {
			if vm {
				log.Warn("ignoring signal as PID 1", "signal", s.String())
				continue
			}
			log.Info("shutting down", "signal", s.String())
			cancel()
			return
		}
	}()

	var wg sync.WaitGroup
	errs := make(chan error, len(listeners))
	policyErr := make(chan error, 1)
	go func() {
		// A policy that does not compile stops the agent: no gated request
		// ever ran, and PID 1 powers off (fail closed, as kata aborts).
		select {
		case err := <-gate.Failed():
			log.Error("policy failed to load; stopping", "err", err)
			policyErr <- err
			cancel()
		case <-ctx.Done():
		}
	}()
	for _, l := range listeners {
		wg.Add(1)
		go func(l net.Listener) {
			defer wg.Done()
			if err := a.Serve(ctx, l); err != nil {
				errs <- fmt.Errorf("serve %s: %w", l.Addr(), err)
			}
		}(l)
	}
	wg.Wait()
	close(errs)
	cctx, ccancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer ccancel()
	if err := a.Shutdown(cctx); err != nil {
		log.Warn("shutdown", "err", err)
	}
	if err := puller.ReleaseBundles(); err != nil {
		log.Warn("shutdown: CDH PullImage bundles", "err", err)
	}
	select {
	case err := <-policyErr:
		return err
	default:
	}
	for err := range errs {
		return err
	}
	return nil
}

// buildAgent wires the rooms; base carries no component attribute, each room
// adds its own.
func buildAgent(base *slog.Logger, cfg config.Config, vm bool, stateRoot, kataRoot string, ready func(context.Context) error, gate agent.Gate, measure func(context.Context, string, string) error, drivers map[string]mount.Driver, secure mount.SecureMounter,
	unseal func(context.Context, string) ([]byte, error), extraMetrics func(io.Writer),
	trusted func(context.Context, uint32, uint32) error) (*agent.Agent, error) {
	log := base.With("component", "agent")
	cm, err := container.New(container.Options{
		StateRoot:   filepath.Join(stateRoot, "containers"),
		NoPivotRoot: vm && rootIsRAM(),
		Logger:      base.With("component", "container"),
	})
	if err != nil {
		return nil, err
	}
	sm, err := mount.New(mount.Options{
		Logger:         base.With("component", "storage"),
		HotplugTimeout: cfg.HotplugTimeout,
		AllowedRoots:   []string{kataRoot},
		Drivers:        drivers,
		SecureMounter:  mount.WithSecureStorageIntegrity(secure, cfg.SecureStorageIntegrity),
	})
	if err != nil {
		return nil, err
	}
	sharedDir := filepath.Join(kataRoot, "shared", "containers")
	if err := os.MkdirAll(sharedDir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", sharedDir, err)
	}
	cp, err := copyfile.New(sharedDir, base.With("component", "copyfile"))
	if err != nil {
		return nil, err
	}
	o := agent.Options{
		Logger:     log,
		VM:         vm,
		Root:       kataRoot,
		Containers: cm,
		Storage:    sm,
		Copier:     cp,
		Ready:      ready,
		Gate:       gate,
		Measure:    measure,
		Unseal:     unseal,

		ExtraMetrics: extraMetrics,
		TrustedStore: trusted,
	}
	if vm {
		o.Network = network.New(nil, base.With("component", "network"))
		o.RootfsPrefixes = []string{kataRoot}
		o.MountSourcePrefixes = []string{kataRoot}
		o.PowerOff = func() {
			time.Sleep(100 * time.Millisecond) // let the DestroySandbox answer go out
			_ = sysinit.PowerOff(log)
		}
	} else {
		o.CgroupParent = "cova" // relative: nests under the agent's own cgroup
	}
	return agent.New(o)
}

// measureWith records the agent's events through the in-process AA: an
// event log that is off (NOT_ENABLED) or a TEE without registers
// (NOT_SUPPORTED) skips measuring, as the reference does; any other failure
// fails the rpc.
func measureWith(svc *aaservice.Service) guestpull.MeasureFunc {
	return func(ctx context.Context, domain, op, content string) error {
		r, err := svc.ExtendRuntimeMeasurement(ctx, &aa.ExtendRuntimeMeasurementRequest{
			Domain: domain, Operation: op, Content: content,
		})
		if err != nil {
			return err
		}
		switch r.GetResult() {
		case aa.RuntimeMeasurementResult_OK, aa.RuntimeMeasurementResult_NOT_ENABLED, aa.RuntimeMeasurementResult_NOT_SUPPORTED:
			return nil
		}
		return fmt.Errorf("runtime measurement result %v", r.GetResult())
	}
}

// newPuller makes the image puller; its layer store lives under the Kata
// root (tmpfs /run in a guest).
func newPuller(log *slog.Logger, kataRoot string, insecure []string, cdhTOML string, res imagepull.ResourceGetter) (*imagepull.Puller, error) {
	var regs []registry.Registry
	for _, h := range insecure {
		regs = append(regs, registry.Registry{Prefix: h, Insecure: true})
	}
	cfg := imagepull.Config{
		WorkDir:  filepath.Join(kataRoot, "image"),
		Registry: registry.Config{Registries: regs, Logger: log},
		Logger:   log,
	}
	if cdhTOML != "" {
		if err := applyCDHImage(&cfg, cdhTOML, res); err != nil {
			return nil, fmt.Errorf("initdata: %w", err)
		}
	}
	return imagepull.New(cfg)
}

// kbsResources adapts the KBS client to imagepull's ResourceGetter.
type kbsResources struct{ c *kbs.Client }

func (k kbsResources) GetResource(ctx context.Context, uri string) ([]byte, error) {
	return k.c.Resource(ctx, uri)
}

// onceErr turns a channel that delivers one error into a function every
// caller can wait on.
func onceErr(ch <-chan error) func(context.Context) error {
	var once sync.Once
	done := make(chan struct{})
	var err error
	go once.Do(func() { err = <-ch; close(done) })
	return func(ctx context.Context) error {
		select {
		case <-done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func listen(ctx context.Context, log *slog.Logger, cfg config.Config) ([]net.Listener, error) {
	var ls []net.Listener
	addrs := []string{cfg.ServerAddr}
	if cfg.TestTransport != "" {
		addrs = append(addrs, cfg.TestTransport)
	}
	var errs []error
	for _, s := range addrs {
		a, err := config.ParseAddr(s)
		if err != nil {
			return nil, err
		}
		l, err := transport.Listen(ctx, a)
		if err != nil {
			errs = append(errs, fmt.Errorf("listen on %s: %w", s, err))
			log.Warn("listen failed", "addr", s, "err", err)
			continue
		}
		ls = append(ls, l)
	}
	if len(ls) == 0 {
		return nil, errors.Join(errs...)
	}
	return ls, nil
}

func addrs(ls []net.Listener) string {
	var s []string
	for _, l := range ls {
		s = append(s, l.Addr().String())
	}
	return strings.Join(s, ",")
}

// rootIsRAM reports whether / is an initramfs (rootfs/ramfs/tmpfs), where
// pivot_root fails.
func rootIsRAM() bool {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return true
	}
	return st.Type == unix.RAMFS_MAGIC || st.Type == unix.TMPFS_MAGIC
}

// phases times the boot steps for the "agent listening" line.
type phases struct {
	last time.Time
	b    strings.Builder
}

func newPhases(start time.Time) *phases { return &phases{last: start} }

// mark records the time since the previous mark under name.
func (p *phases) mark(name string) {
	now := time.Now()
	if p.b.Len() > 0 {
		p.b.WriteByte(' ')
	}
	fmt.Fprintf(&p.b, "%s=%.1f", name, float64(now.Sub(p.last).Microseconds())/1000)
	p.last = now
}

func (p *phases) String() string { return p.b.String() }
