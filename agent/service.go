package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cova-project/cova/agent/container"
	"github.com/cova-project/cova/agent/copyfile"
	"github.com/cova-project/cova/agent/ocispec"
	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/protocols/types"
)

// service implements pb.AgentServiceService. Each method validates and
// delegates; the interceptor has already consulted the policy gate.
type service struct{ a *Agent }

var empty = &emptypb.Empty{}

func done(err error) (*emptypb.Empty, error) {
	if err != nil {
		return nil, err
	}
	return empty, nil
}

// initExecID maps the init process's exec id to "": kata addresses a
// container's init either with exec_id "" or with the exec_id its
// CreateContainer carried, which the shim sets to the container id.
func initExecID(cid, eid string) string {
	if eid == cid {
		return ""
	}
	return eid
}

func (s *service) proc(cid, eid string) (*container.Container, *container.Process, error) {
	eid = initExecID(cid, eid)
	c, err := s.a.opts.Containers.Get(cid)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.Process(eid)
	if err != nil {
		return nil, nil, err
	}
	return c, p, nil
}

// --- containers ---

func (s *service) CreateContainer(ctx context.Context, r *pb.CreateContainerRequest) (*emptypb.Empty, error) {
	return done(s.a.createContainer(ctx, r))
}

func (s *service) StartContainer(ctx context.Context, r *pb.StartContainerRequest) (*emptypb.Empty, error) {
	c, err := s.a.opts.Containers.Get(r.ContainerId)
	if err != nil {
		return nil, err
	}
	root := ""
	if c.Spec.Root != nil {
		root = c.Spec.Root.Path
	}
	env, ok := s.a.createdEnv.Load(r.ContainerId)
	if !ok {
		return nil, fmt.Errorf("container %s: no measurement recorded at create: %w", r.ContainerId, errdefs.ErrFailedPrecondition)
	}
	if err := s.a.measureProcess(ctx, "StartContainer", r.ContainerId, "", root, c.Spec.Process, env.([]envDigest)); err != nil {
		return nil, err
	}
	return done(s.a.opts.Containers.Start(ctx, r.ContainerId))
}

func (s *service) RemoveContainer(ctx context.Context, r *pb.RemoveContainerRequest) (*emptypb.Empty, error) {
	return done(s.a.removeContainer(ctx, r))
}

func (s *service) ExecProcess(ctx context.Context, r *pb.ExecProcessRequest) (*emptypb.Empty, error) {
	if r.StringUser != nil {
		return nil, invalid("string_user", "user names are not supported")
	}
	if r.Process == nil {
		return nil, invalid("process", "is null")
	}
	if r.ExecId == r.ContainerId {
		return nil, fmt.Errorf("exec_id %q is the init process's: %w", r.ExecId, errdefs.ErrAlreadyExists)
	}
	if !container.ValidID(r.ExecId) {
		return nil, invalid("exec_id", "%q is not a valid id", r.ExecId)
	}
	c, err := s.a.opts.Containers.Get(r.ContainerId)
	if err != nil {
		return nil, err
	}
	ps, err := ocispec.ToProcess(r.Process)
	if err != nil {
		return nil, err
	}
	sentEnv := envDigests(ps.Env) // before unsealing, as for containers
	if err := s.a.unsealEnv(ctx, "process.Env", ps.Env); err != nil {
		return nil, err
	}
	if err := s.a.measureProcess(ctx, "ExecProcess", r.ContainerId, r.ExecId, "", ps, sentEnv); err != nil {
		return nil, err
	}
	_, err = c.Exec(ctx, r.ExecId, ps)
	return done(err)
}

func (s *service) SignalProcess(ctx context.Context, r *pb.SignalProcessRequest) (*emptypb.Empty, error) {
	if r.Signal == 0 || r.Signal > 64 {
		return nil, invalid("signal", "%d is not a signal number", r.Signal)
	}
	c, err := s.a.opts.Containers.Get(r.ContainerId)
	if err != nil {
		return nil, err
	}
	if r.ExecId == r.ContainerId {
		return done(c.Init().Signal(syscall.Signal(r.Signal)))
	}
	return done(c.Signal(r.ExecId, syscall.Signal(r.Signal)))
}

func (s *service) WaitProcess(ctx context.Context, r *pb.WaitProcessRequest) (*pb.WaitProcessResponse, error) {
	c, p, err := s.proc(r.ContainerId, r.ExecId)
	if err != nil {
		return nil, err
	}
	st, err := p.Wait(ctx)
	if err != nil {
		return nil, err
	}
	if eid := initExecID(r.ContainerId, r.ExecId); eid != "" {
		c.ForgetExec(eid, s.a.opts.ExecGrace)
	}
	return &pb.WaitProcessResponse{Status: int32(st)}, nil
}

func (s *service) UpdateContainer(ctx context.Context, r *pb.UpdateContainerRequest) (*emptypb.Empty, error) {
	if r.Resources == nil {
		return nil, invalid("resources", "is null")
	}
	c, err := s.a.opts.Containers.Get(r.ContainerId)
	if err != nil {
		return nil, err
	}
	res, err := ocispec.ToResources(r.Resources)
	if err != nil {
		return nil, err
	}
	return done(c.Update(res))
}

func (s *service) UpdateEphemeralMounts(ctx context.Context, r *pb.UpdateEphemeralMountsRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("UpdateEphemeralMounts")
}

func (s *service) StatsContainer(ctx context.Context, r *pb.StatsContainerRequest) (*pb.StatsContainerResponse, error) {
	c, err := s.a.opts.Containers.Get(r.ContainerId)
	if err != nil {
		return nil, err
	}
	st, err := c.Stats()
	if err != nil {
		return nil, err
	}
	return &pb.StatsContainerResponse{CgroupStats: cgroupStatsToPB(st)}, nil
}

func (s *service) PauseContainer(ctx context.Context, r *pb.PauseContainerRequest) (*emptypb.Empty, error) {
	c, err := s.a.opts.Containers.Get(r.ContainerId)
	if err != nil {
		return nil, err
	}
	return done(c.Pause())
}

func (s *service) ResumeContainer(ctx context.Context, r *pb.ResumeContainerRequest) (*emptypb.Empty, error) {
	c, err := s.a.opts.Containers.Get(r.ContainerId)
	if err != nil {
		return nil, err
	}
	return done(c.Resume())
}

func (s *service) RemoveStaleVirtiofsShareMounts(ctx context.Context, r *pb.RemoveStaleVirtiofsShareMountsRequest) (*emptypb.Empty, error) {
	return empty, nil // nothing is left stale: storages are reference counted
}

func (s *service) GetDiagnosticData(ctx context.Context, r *pb.GetDiagnosticDataRequest) (*pb.GetDiagnosticDataResponse, error) {
	return s.a.diagnosticData(ctx, r)
}

// --- streams ---

func (s *service) WriteStdin(ctx context.Context, r *pb.WriteStreamRequest) (*pb.WriteStreamResponse, error) {
	_, p, err := s.proc(r.ContainerId, r.ExecId)
	if err != nil {
		return nil, err
	}
	if len(r.Data) == 0 { // empty data closes stdin (kata semantics)
		return &pb.WriteStreamResponse{}, p.CloseStdin()
	}
	n, err := p.WriteStdin(ctx, r.Data)
	if err != nil {
		return nil, err
	}
	return &pb.WriteStreamResponse{Len: uint32(n)}, nil
}

func (s *service) read(ctx context.Context, r *pb.ReadStreamRequest, stdout bool) (*pb.ReadStreamResponse, error) {
	_, p, err := s.proc(r.ContainerId, r.ExecId)
	if drainRequested(ctx) {
		// Denied: the host learns nothing (not even whether the process
		// exists), and the output is drained so the process never blocks.
		if err == nil {
			p.DrainStream(stdout)
		}
		return &pb.ReadStreamResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	read := p.ReadStderr
	if stdout {
		read = p.ReadStdout
	}
	data, err := read(ctx, int(min(r.Len, container.MaxReadLen)))
	if errors.Is(err, io.EOF) {
		return &pb.ReadStreamResponse{}, nil // EOF is empty data
	}
	if err != nil {
		return nil, err
	}
	return &pb.ReadStreamResponse{Data: data}, nil
}

func (s *service) ReadStdout(ctx context.Context, r *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	return s.read(ctx, r, true)
}

func (s *service) ReadStderr(ctx context.Context, r *pb.ReadStreamRequest) (*pb.ReadStreamResponse, error) {
	return s.read(ctx, r, false)
}

func (s *service) CloseStdin(ctx context.Context, r *pb.CloseStdinRequest) (*emptypb.Empty, error) {
	_, p, err := s.proc(r.ContainerId, r.ExecId)
	if err != nil {
		return nil, err
	}
	return done(p.CloseStdin())
}

func (s *service) TtyWinResize(ctx context.Context, r *pb.TtyWinResizeRequest) (*emptypb.Empty, error) {
	_, p, err := s.proc(r.ContainerId, r.ExecId)
	if err != nil {
		return nil, err
	}
	return done(p.Resize(r.Row, r.Column))
}

// --- network ---

func (s *service) net() error {
	if s.a.opts.Network == nil {
		return hostModeRefusal("change the network")
	}
	return nil
}

func (s *service) UpdateInterface(ctx context.Context, r *pb.UpdateInterfaceRequest) (*types.Interface, error) {
	if err := s.net(); err != nil {
		return nil, err
	}
	if r.Interface == nil {
		return nil, invalid("interface", "is null")
	}
	return s.a.opts.Network.UpdateInterface(ctx, r.Interface)
}

func (s *service) UpdateRoutes(ctx context.Context, r *pb.UpdateRoutesRequest) (*pb.Routes, error) {
	if err := s.net(); err != nil {
		return nil, err
	}
	if r.Routes == nil {
		return nil, invalid("routes", "is null")
	}
	routes, err := s.a.opts.Network.UpdateRoutes(ctx, r.Routes.Routes)
	if err != nil {
		return nil, err
	}
	return &pb.Routes{Routes: routes}, nil
}

func (s *service) ListInterfaces(ctx context.Context, r *pb.ListInterfacesRequest) (*pb.Interfaces, error) {
	m := s.a.opts.Network
	if m == nil {
		m = s.a.readOnlyNetwork()
	}
	ifs, err := m.ListInterfaces(ctx)
	if err != nil {
		return nil, err
	}
	return &pb.Interfaces{Interfaces: ifs}, nil
}

func (s *service) ListRoutes(ctx context.Context, r *pb.ListRoutesRequest) (*pb.Routes, error) {
	m := s.a.opts.Network
	if m == nil {
		m = s.a.readOnlyNetwork()
	}
	routes, err := m.ListRoutes(ctx)
	if err != nil {
		return nil, err
	}
	return &pb.Routes{Routes: routes}, nil
}

func (s *service) AddARPNeighbors(ctx context.Context, r *pb.AddARPNeighborsRequest) (*emptypb.Empty, error) {
	if err := s.net(); err != nil {
		return nil, err
	}
	if r.Neighbors == nil {
		return nil, invalid("neighbors", "is null")
	}
	return done(s.a.opts.Network.AddARPNeighbors(ctx, r.Neighbors.ARPNeighbors))
}

func (s *service) GetIPTables(ctx context.Context, r *pb.GetIPTablesRequest) (*pb.GetIPTablesResponse, error) {
	data, err := s.a.getIPTables(ctx, r.IsIpv6)
	if err != nil {
		return nil, err
	}
	return &pb.GetIPTablesResponse{Data: data}, nil
}

func (s *service) SetIPTables(ctx context.Context, r *pb.SetIPTablesRequest) (*pb.SetIPTablesResponse, error) {
	if !s.a.opts.VM {
		return nil, hostModeRefusal("change iptables rules")
	}
	data, err := s.a.setIPTables(ctx, r.IsIpv6, r.Data)
	if err != nil {
		return nil, err
	}
	return &pb.SetIPTablesResponse{Data: data}, nil
}

// --- guest ---

func (s *service) GetMetrics(ctx context.Context, r *pb.GetMetricsRequest) (*pb.Metrics, error) {
	return &pb.Metrics{Metrics: s.a.metrics()}, nil
}

func (s *service) MemAgentMemcgSet(ctx context.Context, r *pb.MemAgentMemcgConfig) (*emptypb.Empty, error) {
	return nil, unimplemented("MemAgentMemcgSet")
}

func (s *service) MemAgentCompactSet(ctx context.Context, r *pb.MemAgentCompactConfig) (*emptypb.Empty, error) {
	return nil, unimplemented("MemAgentCompactSet")
}

func (s *service) CreateSandbox(ctx context.Context, r *pb.CreateSandboxRequest) (*emptypb.Empty, error) {
	return done(s.a.createSandbox(ctx, r))
}

func (s *service) DestroySandbox(ctx context.Context, r *pb.DestroySandboxRequest) (*emptypb.Empty, error) {
	return done(s.a.destroySandbox(ctx))
}

func (s *service) OnlineCPUMem(ctx context.Context, r *pb.OnlineCPUMemRequest) (*emptypb.Empty, error) {
	return done(s.a.onlineCPUMem(ctx, r))
}

func (s *service) ReseedRandomDev(ctx context.Context, r *pb.ReseedRandomDevRequest) (*emptypb.Empty, error) {
	return done(s.a.reseedRandom(r.Data))
}

func (s *service) GetGuestDetails(ctx context.Context, r *pb.GuestDetailsRequest) (*pb.GuestDetailsResponse, error) {
	return s.a.guestDetails(r), nil
}

func (s *service) MemHotplugByProbe(ctx context.Context, r *pb.MemHotplugByProbeRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("MemHotplugByProbe")
}

func (s *service) SetGuestDateTime(ctx context.Context, r *pb.SetGuestDateTimeRequest) (*emptypb.Empty, error) {
	return done(s.a.setTime(r.Sec, r.Usec))
}

func (s *service) CopyFile(ctx context.Context, r *pb.CopyFileRequest) (*emptypb.Empty, error) {
	return done(s.a.opts.Copier.Copy(ctx, copyfile.Request{
		Path: r.Path, FileSize: r.FileSize, FileMode: r.FileMode, DirMode: r.DirMode,
		UID: r.Uid, GID: r.Gid, Offset: r.Offset, Data: r.Data,
	}))
}

func (s *service) GetOOMEvent(ctx context.Context, r *pb.GetOOMEventRequest) (*pb.OOMEvent, error) {
	select {
	case id := <-s.a.opts.Containers.OOMEvents():
		return &pb.OOMEvent{ContainerId: id}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *service) AddSwap(ctx context.Context, r *pb.AddSwapRequest) (*emptypb.Empty, error) {
	return done(s.a.addSwap(ctx, r.PCIPath))
}

func (s *service) AddSwapPath(ctx context.Context, r *pb.AddSwapPathRequest) (*emptypb.Empty, error) {
	return done(s.a.addSwapPath(r.Path))
}

func (s *service) GetVolumeStats(ctx context.Context, r *pb.VolumeStatsRequest) (*pb.VolumeStatsResponse, error) {
	return s.a.volumeStats(r.VolumeGuestPath)
}

func (s *service) ResizeVolume(ctx context.Context, r *pb.ResizeVolumeRequest) (*emptypb.Empty, error) {
	return nil, unimplemented("ResizeVolume")
}

func (s *service) SetPolicy(ctx context.Context, r *pb.SetPolicyRequest) (*emptypb.Empty, error) {
	ps, ok := s.a.opts.Gate.(PolicySetter)
	if !ok {
		return nil, unimplemented("SetPolicy without a policy engine")
	}
	if err := ps.SetPolicy(r.Policy); err != nil {
		return nil, err
	}
	s.a.log.Info("policy replaced by SetPolicy", "bytes", len(r.Policy))
	return empty, nil
}

// health implements pb.HealthService.
type health struct{ a *Agent }

func (h *health) Check(ctx context.Context, r *pb.CheckRequest) (*pb.HealthCheckResponse, error) {
	return &pb.HealthCheckResponse{Status: pb.HealthCheckResponse_SERVING}, nil
}

func (h *health) Version(ctx context.Context, r *pb.CheckRequest) (*pb.VersionCheckResponse, error) {
	return &pb.VersionCheckResponse{GrpcVersion: APIVersion, AgentVersion: Version}, nil
}
