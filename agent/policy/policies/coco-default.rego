# coco-default.rego: the policy Cova enforces in a confidential guest when
# initdata carries none.
#
# It knows nothing about the workload, so it cannot pin images, commands or
# mounts (a genpolicy policy in initdata does that). What it does is keep the
# host, which drives the agent, to the pod lifecycle: it may create, start,
# stop and remove containers and the sandbox, but it gets no shell, no
# container output or input, no control over the guest's clock, entropy,
# firewall, swap or policy, and it cannot add hooks or kernel modules or
# point network setup at the loopback device.
#
# Every rpc of the agent API has a decision here; policy_test.go fails when
# a new rpc appears without one. A refused request gets one line of reason,
# printed by deny() below.
package agent_policy

# ---- The pod lifecycle the host drives --------------------------------------

default StartContainerRequest := true

default RemoveContainerRequest := true

default WaitProcessRequest := true

default SignalProcessRequest := true

default StatsContainerRequest := true

default GetOOMEventRequest := true

default DestroySandboxRequest := true

default GuestDetailsRequest := true

default TtyWinResizeRequest := true

default OnlineCPUMemRequest := true

default RemoveStaleVirtiofsShareMountsRequest := true

# ---- Host access to a workload: a shell, its output, its input ---------------

default ExecProcessRequest := false

default ReadStreamRequest := false

default WriteStreamRequest := false

default CloseStdinRequest := false

default GetDiagnosticDataRequest := false

# ---- The guest's own trust: policy, clock, entropy, firewall, memory ---------

default SetPolicyRequest := false

default SetGuestDateTimeRequest := false

default ReseedRandomDevRequest := false

default GetIPTablesRequest := false

default SetIPTablesRequest := false

default AddSwapRequest := false

default AddSwapPathRequest := false

default MemHotplugByProbeRequest := false

default MemAgentMemcgConfig := false

default MemAgentCompactConfig := false

# ---- Changes the pod spec does not ask for ----------------------------------

default UpdateContainerRequest := false

default UpdateEphemeralMountsRequest := false

default PauseContainerRequest := false

default ResumeContainerRequest := false

# ---- Information the host does not need --------------------------------------

default GetMetricsRequest := false

default ListInterfacesRequest := false

default ListRoutesRequest := false

default VolumeStatsRequest := false

default ResizeVolumeRequest := false

# ---- Checked requests ---------------------------------------------------------
#
# Each checked request collects the reasons to refuse it; it is allowed when
# there are none.

CreateSandboxRequest := verdict(create_sandbox_refusals)

CreateContainerRequest := verdict(create_container_refusals)

CopyFileRequest := verdict(copy_file_refusals)

UpdateInterfaceRequest := verdict(update_interface_refusals)

UpdateRoutesRequest := verdict(update_routes_refusals)

AddARPNeighborsRequest := verdict(add_arp_neighbors_refusals)

verdict(refusals) := true if count(refusals) == 0

verdict(refusals) := false if {
	count(refusals) > 0
	print(concat("; ", refusals))
}

# CreateSandbox: guest hooks run as guest root, and kernel modules change
# the guest kernel; neither is the host's to ask for.
create_sandbox_refusals contains sprintf("guest_hook_path %q is set", [input.guest_hook_path]) if {
	input.guest_hook_path != ""
}

create_sandbox_refusals contains sprintf("kernel_modules requested: %s", [concat(", ", names)]) if {
	count(input.kernel_modules) > 0
	names := [m.name | some m in input.kernel_modules]
}

# CreateContainer: OCI hooks would run host-chosen programs as guest root
# (the runtime clears them for Kata; a request carrying them is an attack).
create_container_refusals contains "OCI spec is missing" if {
	input.OCI == null
}

create_container_refusals contains "OCI.Hooks is set" if {
	input.OCI.Hooks != null
}

# ---- Storages and mounts ------------------------------------------------------
#
# Kata's own rules do not validate mounts; here the host may only place
# storages and bind sources where Kata's runtime puts them, the container's
# rootfs must be the image pulled (and signature-checked) in the guest, and
# no host-shared or host-assembled filesystem enters the TEE.

kata_root := "/run/kata-containers/"

sandbox_dir := "/run/kata-containers/sandbox/"

# Storage drivers whose content the guest produces or that the pod spec
# asks for as volumes. virtio-fs and overlayfs would put host-controlled
# files into the container; 9p has no handler.
coco_storage_drivers := {"image_guest_pull", "local", "ephemeral", "blk", "mmioblk", "scsi"}

# Kernel filesystems a container may mount without a storage.
pseudo_filesystems := {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2"}

container_rootfs := concat("", [kata_root, input.container_id, "/rootfs"])

# p is dir or lies below it, with no "." or ".." component.
within(p, dir) if {
	startswith(concat("", [p, "/"]), concat("", [trim_suffix(dir, "/"), "/"]))
	not dot_component(p)
}

dot_component(p) if {
	some part in split(p, "/")
	part in {".", ".."}
}

create_sandbox_refusals contains sprintf("storages[%d].driver %q is not allowed", [i, s.driver]) if {
	some i, s in input.storages
	not s.driver in coco_storage_drivers
}

create_sandbox_refusals contains sprintf("storages[%d].mount_point %q is not under %s", [i, s.mount_point, sandbox_dir]) if {
	some i, s in input.storages
	not within(s.mount_point, sandbox_dir)
}

create_container_refusals contains sprintf("storages[%d].driver %q is not allowed", [i, s.driver]) if {
	some i, s in input.storages
	not s.driver in coco_storage_drivers
}

create_container_refusals contains sprintf("storages[%d].mount_point %q is outside %s and %s%s/", [i, s.mount_point, sandbox_dir, kata_root, input.container_id]) if {
	some i, s in input.storages
	not within(s.mount_point, sandbox_dir)
	not within(s.mount_point, concat("", [kata_root, input.container_id]))
}

# The rootfs is the image pulled in the guest: not a block device, a
# host-shared directory or files the host copied in (kata GHSA-5fc8: a
# malformed image made the runtime hot-plug a host disk as the rootfs).
create_container_refusals contains sprintf("OCI.Root.Path %q is not %s", [input.OCI.Root.Path, container_rootfs]) if {
	input.OCI.Root.Path != container_rootfs
}

create_container_refusals contains sprintf("storages[%d]: a %s storage cannot be the rootfs; the image is pulled in the guest", [i, s.driver]) if {
	some i, s in input.storages
	s.mount_point == container_rootfs
	s.driver != "image_guest_pull"
}

create_container_refusals contains sprintf("no image_guest_pull storage provides the rootfs %s", [container_rootfs]) if {
	input.OCI != null
	not rootfs_pulled
}

rootfs_pulled if {
	some s in input.storages
	s.driver == "image_guest_pull"
	s.mount_point == container_rootfs
}

bind_mount(m) if m.type_ == "bind"

bind_mount(m) if {
	some o in m.options
	o in {"bind", "rbind"}
}

create_container_refusals contains sprintf("mount %s: type %q is not a pseudo filesystem", [m.destination, m.type_]) if {
	some m in input.OCI.Mounts
	not bind_mount(m)
	not m.type_ in pseudo_filesystems
}

create_container_refusals contains sprintf("mount %s: bind source %q is outside %s, %s and this container's volumes", [m.destination, m.source, shared_dir, sandbox_dir]) if {
	some m in input.OCI.Mounts
	bind_mount(m)
	not bind_source_allowed(m.source)
}

bind_source_allowed(src) if within(src, shared_dir)

bind_source_allowed(src) if within(src, sandbox_dir)

bind_source_allowed(src) if {
	some s in input.storages
	s.mount_point != container_rootfs
	within(src, s.mount_point)
}

# CopyFile: only into the shared directory, no "..", and symlinks that stay
# inside the directory they are created in.
shared_dir := "/run/kata-containers/shared/containers/"

# Kata's runtime names what it copies <container id>-<16 random hex>-<name>
# (optionally under watchable/); nothing else, in particular no container
# rootfs, is the host's to write.
copy_file_name := `^/run/kata-containers/shared/containers/(watchable/)?[A-Za-z0-9][A-Za-z0-9_.-]*-[a-z0-9]{16}-[^/]`

copy_file_refusals contains sprintf("path %q is not under %s", [input.path, shared_dir]) if {
	not startswith(input.path, shared_dir)
}

copy_file_refusals contains sprintf("path %q is not <container id>-<16 hex>-<name> in %s", [input.path, shared_dir]) if {
	startswith(input.path, shared_dir)
	not regex.match(copy_file_name, input.path)
}

copy_file_refusals contains sprintf("path %q has a .. component", [input.path]) if {
	some part in split(input.path, "/")
	part == ".."
}

copy_file_refusals contains sprintf("file type %s is not copied", [input.file_type]) if {
	not input.file_type in {"Regular", "Directory", "Symlink"}
}

copy_file_refusals contains sprintf("symlink target %q is absolute", [input.symlink_target]) if {
	input.file_type == "Symlink"
	startswith(input.symlink_target, "/")
}

copy_file_refusals contains sprintf("symlink target %q has a .. component", [input.symlink_target]) if {
	input.file_type == "Symlink"
	some part in split(input.symlink_target, "/")
	part == ".."
}

copy_file_refusals contains sprintf("symlink %q sits directly in %s", [input.path, shared_dir]) if {
	input.file_type == "Symlink"
	startswith(input.path, shared_dir)
	not contains(trim_prefix(input.path, shared_dir), "/")
}

# Network setup must not touch the loopback device or loopback addresses.
loopback_cidrs := ["127.0.0.0/8", "::1/128", "::ffff:127.0.0.0/104"]

loopback(addr) if {
	some cidr in loopback_cidrs
	net.cidr_contains(cidr, addr)
}

update_interface_refusals contains "interface is the loopback device" if {
	some name in [input.interface.name, input.interface.device]
	name == "lo"
}

update_interface_refusals contains "interface flags include IFF_LOOPBACK" if {
	bits.and(input.interface.raw_flags, 8) != 0
}

update_interface_refusals contains sprintf("interface address %s is a loopback address", [a.address]) if {
	some a in input.interface.IPAddresses
	loopback(a.address)
}

update_routes_refusals contains sprintf("route %q uses the loopback device", [r.dest]) if {
	some r in input.routes.Routes
	r.device == "lo"
}

update_routes_refusals contains sprintf("route %q has loopback %s %s", [r.dest, field, r[field]]) if {
	some r in input.routes.Routes
	some field in ["dest", "gateway", "source"]
	loopback(r[field])
}

add_arp_neighbors_refusals contains "neighbor on the loopback device" if {
	some n in input.neighbors.ARPNeighbors
	n.device == "lo"
}

add_arp_neighbors_refusals contains sprintf("neighbor %s is a loopback address", [n.toIPAddress.address]) if {
	some n in input.neighbors.ARPNeighbors
	loopback(n.toIPAddress.address)
}
