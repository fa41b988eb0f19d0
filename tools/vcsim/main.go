// vcsim for vmpool's tests and local stack: govmomi's vCenter simulator with what vmpool needs
// on top. It serves HTTPS with a freshly generated self-signed certificate (written to -cert so
// clients can trust it as a CA bundle), turns the first VM of each datacenter into a template at
// -template (inside folders), creates the -folders, and makes powered-on VMs report guest info
// (IP, hostname = VM name, tools running) only after -boot-delay, so readiness is testable.
// Clones into a folder named -no-clone-folder are refused with NoPermission, as vCenter refuses
// a user without the clone privilege there, so permission failures are testable.
// With -host-load-per-vm, hosts report CPU and memory use that grows with their powered-on VMs.
// An operator's bad day: -clone-delay keeps each clone task running that long (the VM is in its
// folder meanwhile: vCenter's documentation does not say when a clone's VM shows; the task carries
// its VmBeingClonedEvent's chain id, as vCenter's do), -fail-clone-folder makes clone tasks into
// folders of that name end in error after the VM was made (the debris a failed clone can leave);
// a delayed clone's task can be cancelled (CancelTask: it ends in error, its VM removed) except
// in folders named -no-cancel-folder, where CancelTask is refused with NoPermission and the clone
// runs on (as vCenter refuses a user without the privilege to cancel it),
// -method-delay slows SOAP methods (a slow vCenter), -session-idle expires idle sessions.
// With -guest-addresses, a booted VM's first interface reports those addresses too (guest.net:
// its ipAddress list and ipConfig, each "address", "address/state" or "address/state/origin"), as a
// dual-stack guest's (origin "random": an IPv6 temporary address, RFC 4941).
// Each managed entity keeps its recentTask (its queued and running tasks and its last completed
// ones, entityRecentTasks in all at least), as vCenter's do, so a client can read a VM's own
// tasks without the whole service's list.
// With -template-snapshot, each template has a snapshot of that name (its current one), taken
// before it is made a template: linked clones from a snapshot are testable (govmomi 0.24 cannot
// snapshot the template once it is wrapped by templateVM).
// With -page-size N, a RetrievePropertiesEx answer holds at most N objects (fewer when the
// caller's maxObjects says so) and the rest follow by its token (ContinueRetrievePropertiesEx,
// CancelRetrievePropertiesEx), as vCenter pages big answers; govmomi 0.24 answers whole and has
// neither method.
// It prints "VCSIM_URL=<url>" once it is serving, then runs until killed.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// templateVM fills gaps of govmomi 0.24's CloneVM_Task that vmpool relies on: it drops
// spec.config.annotation and spec.powerOn, and ignores placement. We apply the first two as
// vCenter does and record the placement asked for in the clone's extraConfig ("vcsim.*") so
// tests can see linked-clone and host-selection decisions.
// The VM is embedded by value: vcsim's PropertyCollector digs the mo type out of field 0 of a
// wrapper struct and cannot follow a pointer there.
type templateVM struct{ simulator.VirtualMachine }

// noCloneFolder names the folders clones into which are refused with NoPermission.
var noCloneFolder string

// failCloneFolder names the folders clones into which end in a task error, leaving the VM made.
var failCloneFolder string

// noCancelFolder names the folders whose delayed clones' tasks refuse CancelTask with NoPermission.
var noCancelFolder string

// cloneDelay is how long a clone task stays queued/running before it ends.
var cloneDelay time.Duration

func (t *templateVM) CloneVMTask(ctx *simulator.Context, req *types.CloneVM_Task) soap.HasFault {
	if folder, ok := simulator.Map.Get(req.Folder).(*simulator.Folder); ok && noCloneFolder != "" && folder.Name == noCloneFolder {
		return &methods.CloneVM_TaskBody{Fault_: simulator.Fault("Permission to perform this operation was denied.",
			&types.NoPermission{Object: req.Folder, PrivilegeId: "VirtualMachine.Provisioning.Clone"})}
	}
	// govmomi 0.24 edits the source's disk backings in place (file name, parent) while cloning:
	// let it edit copies, which become the clone's, so the template keeps its own disks.
	devices := t.Config.Hardware.Device
	copies := make([]types.BaseVirtualDevice, len(devices))
	for i, device := range devices {
		copies[i] = device
		if disk, ok := device.(*types.VirtualDisk); ok {
			copied := *disk
			if backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
				backingCopy := *backing
				copied.Backing = &backingCopy
			}
			copies[i] = &copied
		}
	}
	t.Config.Hardware.Device = copies
	res := t.VirtualMachine.CloneVMTask(ctx, req) // runs the clone task synchronously
	t.Config.Hardware.Device = devices
	body, ok := res.(*methods.CloneVM_TaskBody)
	if !ok || body.Res == nil {
		return res
	}
	task := simulator.Map.Get(body.Res.Returnval).(*simulator.Task) // vcsim runs tasks synchronously
	ref, ok := task.Info.Result.(types.ManagedObjectReference)
	if task.Info.State != types.TaskInfoStateSuccess || !ok {
		return res
	}
	clone := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	loc := req.Spec.Location
	extra := append(clone.Config.ExtraConfig,
		&types.OptionValue{Key: "vcsim.diskMoveType", Value: loc.DiskMoveType},
		&types.OptionValue{Key: "vcsim.fromSnapshot", Value: fmt.Sprint(req.Spec.Snapshot != nil)})
	if loc.Host != nil {
		extra = append(extra, &types.OptionValue{Key: "vcsim.host", Value: loc.Host.Value})
	}
	changes := []types.PropertyChange{{Name: "config.extraConfig", Val: extra}}
	if req.Spec.Config != nil && req.Spec.Config.Annotation != "" {
		changes = append(changes,
			types.PropertyChange{Name: "config.annotation", Val: req.Spec.Config.Annotation},
			types.PropertyChange{Name: "summary.config.annotation", Val: req.Spec.Config.Annotation})
	}
	simulator.Map.Update(clone, changes)
	if req.Spec.PowerOn {
		clone.PowerOnVMTask(ctx, &types.PowerOnVM_Task{This: ref})
	}
	folder, _ := simulator.Map.Get(req.Folder).(*simulator.Folder)
	failing := folder != nil && failCloneFolder != "" && folder.Name == failCloneFolder
	if cloneDelay <= 0 && !failing {
		return res
	}
	// The caller follows this task instead: it ends after cloneDelay, in error when failing.
	created := simulator.CreateTask(t, "cloneVm", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		if failing {
			return nil, &types.SystemError{Reason: "vcsim: clone failed (-fail-clone-folder)"}
		}
		return ref, nil
	})
	// vCenter's events of a task carry the task's eventChainId: the VmBeingClonedEvent naming the
	// clone (destName) is found from its running task (govmomi 0.24 gives each event a chain of
	// its own and tasks none).
	created.Info.EventChainId = beingClonedChain(ctx, t.Self, req.Name)
	refuse := folder != nil && noCancelFolder != "" && folder.Name == noCancelFolder
	late := &cancelableClone{Task: *created, clone: clone, refuse: refuse} //nolint:govet // copying is fine: the Map entry is replaced
	simulator.Map.Put(late)
	finish := func() {
		simulator.Map.WithLock(late, func() {
			if late.Info.State == types.TaskInfoStateQueued { // not cancelled meanwhile
				late.Task.Run()
			}
		})
	}
	if cloneDelay > 0 {
		go func() { time.Sleep(cloneDelay); finish() }()
	} else {
		finish()
	}
	body.Res.Returnval = late.Self
	return res
}

// beingClonedChain is the key (its own chain) of the latest VmBeingClonedEvent of template
// cloned into name: the one CloneVMTask just posted (clones of one template are serialised by
// the simulator's lock on it).
func beingClonedChain(ctx *simulator.Context, template types.ManagedObjectReference, name string) int32 {
	manager := simulator.Map.EventManager()
	var found int32
	ctx.WithLock(manager, func() {
		res := manager.QueryEvents(ctx, &types.QueryEvents{Filter: types.EventFilterSpec{
			Entity:      &types.EventFilterSpecByEntity{Entity: template, Recursion: types.EventFilterSpecRecursionOptionSelf},
			EventTypeId: []string{"VmBeingClonedEvent"},
			MaxCount:    100,
		}})
		body, ok := res.(*methods.QueryEventsBody)
		if !ok || body.Res == nil {
			return
		}
		for _, event := range body.Res.Returnval {
			if cloning, ok := event.(*types.VmBeingClonedEvent); ok && cloning.DestName == name && cloning.Key > found {
				found = cloning.Key
			}
		}
	})
	return found
}

// cancelableClone is a delayed clone's task that CancelTask stops as vCenter does: the task ends
// in error (RequestCanceled) at once and the VM being cloned is removed. govmomi 0.24's tasks
// have no CancelTask. Embedded by value, as templateVM (the PropertyCollector reads field 0).
type cancelableClone struct {
	simulator.Task
	clone  *simulator.VirtualMachine
	refuse bool // CancelTask is refused with NoPermission (-no-cancel-folder); the task runs on
}

func (c *cancelableClone) CancelTask(ctx *simulator.Context, req *types.CancelTask) soap.HasFault {
	body := &methods.CancelTaskBody{}
	if c.refuse {
		body.Fault_ = simulator.Fault("Permission to perform this operation was denied.",
			&types.NoPermission{Object: c.Self, PrivilegeId: "Global.CancelTask"})
		return body
	}
	if c.Info.State != types.TaskInfoStateQueued && c.Info.State != types.TaskInfoStateRunning {
		body.Fault_ = simulator.Fault("the task is not running", &types.InvalidState{})
		return body
	}
	simulator.Map.Update(&c.Task, []types.PropertyChange{
		{Name: "info.completeTime", Val: time.Now()},
		{Name: "info.state", Val: types.TaskInfoStateError},
		{Name: "info.cancelled", Val: true},
		{Name: "info.error", Val: types.LocalizedMethodFault{Fault: &types.RequestCanceled{}, LocalizedMessage: "The task was canceled by a user."}},
	})
	simulator.Map.WithLock(c.clone, func() {
		c.clone.PowerOffVMTask(ctx, &types.PowerOffVM_Task{This: c.clone.Self})
		c.clone.DestroyTask(ctx, &types.Destroy_Task{This: c.clone.Self})
	})
	body.Res = new(types.CancelTaskResponse)
	return body
}

// entityRecentTasks is how many tasks an entity's recentTask keeps (vCenter keeps a VM's tasks of
// the last minutes; a handful in practice).
const entityRecentTasks = 20

// entityTasks is a registry handler that adds each new task to its entity's recentTask, which
// govmomi 0.24 leaves empty (it keeps the task manager's list only).
type entityTasks struct{ mu sync.Mutex }

func (*entityTasks) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VcsimEntityTasks", Value: "entity-tasks"}
}

func (e *entityTasks) PutObject(obj mo.Reference) {
	task, ok := obj.(*simulator.Task)
	if !ok || task.Info.Entity == nil {
		return // not a new task (a cancelableClone replaces its task under the same reference)
	}
	entity, ok := simulator.Map.Get(*task.Info.Entity).(mo.Entity)
	if !ok {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	recent := append(append([]types.ManagedObjectReference(nil), entity.Entity().RecentTask...), task.Self)
	// The oldest completed tasks make room; a queued or running one is always listed, as vCenter
	// documents (only completed tasks are limited). Before, a template with more than ten delayed
	// clones running lost the first ones' tasks from its list.
	drop := len(recent) - entityRecentTasks
	kept := make([]types.ManagedObjectReference, 0, len(recent))
	for _, ref := range recent {
		if drop > 0 && !unfinished(ref) {
			drop--
			continue
		}
		kept = append(kept, ref)
	}
	recent = kept
	simulator.Map.Update(entity, []types.PropertyChange{{Name: "recentTask", Val: recent}})
}

// unfinished tells whether the task at ref is queued or running.
func unfinished(ref types.ManagedObjectReference) bool {
	var state types.TaskInfoState
	switch task := simulator.Map.Get(ref).(type) {
	case *simulator.Task:
		state = task.Info.State
	case *cancelableClone:
		state = task.Info.State
	default:
		return false
	}
	return state == types.TaskInfoStateQueued || state == types.TaskInfoStateRunning
}

func (*entityTasks) UpdateObject(mo.Reference, []types.PropertyChange) {}

func (*entityTasks) RemoveObject(types.ManagedObjectReference) {}

// pageSize caps the objects of each RetrievePropertiesEx answer (0: no cap but the caller's).
var pageSize int

// pagingCollector pages RetrievePropertiesEx answers (pageSize, the caller's maxObjects) and
// serves the rest by token. Embedded by value, as templateVM; each session gets a zero copy of
// it (the simulator makes one per session by reflection), so the pages live in pending.
type pagingCollector struct{ simulator.PropertyCollector }

// remainder is what a token still holds: the objects not yet answered and the page size.
type remainder struct {
	objects []types.ObjectContent
	limit   int
}

var pending = struct {
	sync.Mutex
	next int
	rest map[string]remainder
}{rest: map[string]remainder{}}

func (pc *pagingCollector) RetrievePropertiesEx(ctx *simulator.Context, r *types.RetrievePropertiesEx) soap.HasFault {
	res := pc.PropertyCollector.RetrievePropertiesEx(ctx, r)
	body, ok := res.(*methods.RetrievePropertiesExBody)
	if !ok || body.Res == nil || body.Res.Returnval == nil {
		return res
	}
	limit := pageSize
	if asked := int(r.Options.MaxObjects); asked > 0 && (limit == 0 || asked < limit) {
		limit = asked
	}
	body.Res.Returnval = page(body.Res.Returnval.Objects, limit)
	return body
}

// page is the first limit objects, with a token for the rest when there is a rest.
func page(objects []types.ObjectContent, limit int) *types.RetrieveResult {
	if limit <= 0 || len(objects) <= limit {
		return &types.RetrieveResult{Objects: objects}
	}
	pending.Lock()
	defer pending.Unlock()
	pending.next++
	token := "page-" + strconv.Itoa(pending.next)
	pending.rest[token] = remainder{objects: objects[limit:], limit: limit}
	return &types.RetrieveResult{Objects: objects[:limit], Token: token}
}

func takeRemainder(token string) (remainder, bool) {
	pending.Lock()
	defer pending.Unlock()
	rest, ok := pending.rest[token]
	delete(pending.rest, token)
	return rest, ok
}

func (pc *pagingCollector) ContinueRetrievePropertiesEx(ctx *simulator.Context, r *types.ContinueRetrievePropertiesEx) soap.HasFault {
	body := &methods.ContinueRetrievePropertiesExBody{}
	rest, ok := takeRemainder(r.Token)
	if !ok {
		body.Fault_ = simulator.Fault("unknown or used token", &types.InvalidArgument{InvalidProperty: "token"})
		return body
	}
	body.Res = &types.ContinueRetrievePropertiesExResponse{Returnval: *page(rest.objects, rest.limit)}
	return body
}

func (pc *pagingCollector) CancelRetrievePropertiesEx(ctx *simulator.Context, r *types.CancelRetrievePropertiesEx) soap.HasFault {
	takeRemainder(r.Token)
	return &methods.CancelRetrievePropertiesExBody{Res: new(types.CancelRetrievePropertiesExResponse)}
}

// methodDelays parses "Method=ms,Method=ms" into the simulator's per-method delays.
func methodDelays(spec string) map[string]int {
	delays := map[string]int{}
	for _, item := range strings.Split(spec, ",") {
		name, ms, found := strings.Cut(item, "=")
		if !found {
			continue
		}
		value, err := strconv.Atoi(ms)
		check(err)
		delays[name] = value
	}
	return delays
}

// guestNet is the guest.net a VM reports with addresses ("address", "address/state" or
// "address/state/origin"; state "preferred" and no origin when not given) on its first interface
// (one is made when it has none); none clears them.
func guestNet(vm *simulator.VirtualMachine, addresses []string) []types.GuestNicInfo {
	nics := append([]types.GuestNicInfo(nil), vm.Guest.Net...)
	if len(nics) == 0 {
		nics = []types.GuestNicInfo{{Connected: true, DeviceConfigId: -1}}
	}
	var plain []string
	var configured []types.NetIpConfigInfoIpAddress
	for _, item := range addresses {
		address, rest, _ := strings.Cut(item, "/")
		state, origin, _ := strings.Cut(rest, "/")
		if state == "" {
			state = "preferred"
		}
		plain = append(plain, address)
		configured = append(configured, types.NetIpConfigInfoIpAddress{IpAddress: address, State: state, Origin: origin})
	}
	nics[0].IpAddress = plain
	nics[0].IpConfig = nil
	if len(configured) > 0 {
		nics[0].IpConfig = &types.NetIpConfigInfo{IpAddress: configured}
	}
	return nics
}

// bootLoop gives powered-on VMs guest info once they have been on for bootDelay, and takes it
// away when they are off, like VMware Tools in a real guest (guest.net too, with guestAddresses).
func bootLoop(bootDelay time.Duration, guestIP string, guestAddresses []string) {
	for range time.Tick(100 * time.Millisecond) {
		for _, entity := range simulator.Map.All("VirtualMachine") {
			vm, ok := entity.(*simulator.VirtualMachine)
			if !ok {
				continue // templates (templateVM) never boot
			}
			simulator.Map.WithLock(vm, func() {
				if vm.Guest == nil {
					return // a VM still being cloned or already being destroyed has no guest yet
				}
				boot := vm.Summary.Runtime.BootTime
				on := vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
				booted := on && boot != nil && time.Since(*boot) >= bootDelay
				running := vm.Guest.ToolsRunningStatus == string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
				if booted == running {
					return
				}
				tools, status, ip, name, state := "guestToolsNotRunning", "toolsNotRunning", "", "", "notRunning"
				if booted {
					tools, status, ip, name, state = "guestToolsRunning", "toolsOk", guestIP, vm.Name, "running"
				}
				changes := []types.PropertyChange{
					{Name: "guest.toolsRunningStatus", Val: tools}, {Name: "guest.toolsStatus", Val: types.VirtualMachineToolsStatus(status)},
					{Name: "guest.ipAddress", Val: ip}, {Name: "guest.hostName", Val: name}, {Name: "guest.guestState", Val: state},
					{Name: "summary.guest.toolsRunningStatus", Val: tools}, {Name: "summary.guest.toolsStatus", Val: types.VirtualMachineToolsStatus(status)},
					{Name: "summary.guest.ipAddress", Val: ip}, {Name: "summary.guest.hostName", Val: name},
				}
				if len(guestAddresses) > 0 {
					var reported []string
					if booted {
						reported = guestAddresses
					}
					changes = append(changes, types.PropertyChange{Name: "guest.net", Val: guestNet(vm, reported)})
				}
				simulator.Map.Update(vm, changes)
			})
		}
	}
}

// loadLoop makes each host's quick stats follow its powered-on VMs when loadPerVM > 0: every such
// VM adds loadPerVM percent of the host's CPU and memory to the simulator's static figures, so a
// host with more VMs is busier, as host selection and migration expect of a real vCenter.
func loadLoop(loadPerVM float64) {
	for range time.Tick(100 * time.Millisecond) {
		perHost := map[types.ManagedObjectReference]int{}
		for _, entity := range simulator.Map.All("VirtualMachine") {
			vm, ok := entity.(*simulator.VirtualMachine)
			if !ok {
				continue
			}
			simulator.Map.WithLock(vm, func() {
				if vm.Runtime.Host != nil && vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
					perHost[*vm.Runtime.Host]++
				}
			})
		}
		for _, entity := range simulator.Map.All("HostSystem") {
			host := entity.(*simulator.HostSystem)
			simulator.Map.WithLock(host, func() {
				hw := host.Summary.Hardware
				if hw == nil {
					return
				}
				share := loadPerVM / 100 * float64(perHost[host.Self])
				cpu := int32(67 + share*float64(hw.CpuMhz)*float64(hw.NumCpuCores))
				memory := int32(1404 + share*float64(hw.MemorySize/(1024*1024)))
				stats := host.Summary.QuickStats
				if stats.OverallCpuUsage == cpu && stats.OverallMemoryUsage == memory {
					return
				}
				simulator.Map.Update(host, []types.PropertyChange{
					{Name: "summary.quickStats.overallCpuUsage", Val: cpu},
					{Name: "summary.quickStats.overallMemoryUsage", Val: memory},
				})
			})
		}
	}
}

// selfSignedCert makes a certificate for 127.0.0.1/localhost and writes its PEM to certPath.
func selfSignedCert(certPath string) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	check(err)
	tmpl := x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "vcsim"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * 365 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	check(err)
	if certPath != "" {
		check(os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// setup turns each datacenter's first VM into the template (with a current snapshot named
// snapshot unless empty), removes the other VMs, makes folders.
func setup(ctx context.Context, u *url.URL, template, snapshot string, folders []string) {
	c, err := govmomi.NewClient(ctx, u, true)
	check(err)
	finder := find.NewFinder(c.Client)
	dcs, err := finder.DatacenterList(ctx, "*")
	check(err)
	for _, dc := range dcs {
		finder.SetDatacenter(dc)
		dcFolders, err := dc.Folders(ctx)
		check(err)
		vms, err := finder.VirtualMachineList(ctx, "*")
		check(err)
		for _, vm := range vms[1:] {
			check(wait(vm.Destroy(ctx)))
		}
		for _, f := range folders {
			makeFolders(ctx, dcFolders.VmFolder, f)
		}
		parent := makeFolders(ctx, dcFolders.VmFolder, path.Dir(template))
		check(wait(vms[0].Rename(ctx, path.Base(template))))
		check(wait(parent.MoveInto(ctx, []types.ManagedObjectReference{vms[0].Reference()})))
		if snapshot != "" {
			check(wait(vms[0].CreateSnapshot(ctx, snapshot, "", false, false)))
		}
		check(vms[0].MarkAsTemplate(ctx))
		vm := simulator.Map.Get(vms[0].Reference()).(*simulator.VirtualMachine)
		simulator.Map.Put(&templateVM{*vm}) //nolint:govet // copying is fine: the Map entry is replaced
	}
}

// makeFolders creates each missing folder of a slash-separated path under root; returns the last.
func makeFolders(ctx context.Context, root *object.Folder, folderPath string) *object.Folder {
	folder := root
	for _, name := range strings.Split(folderPath, "/") {
		if name == "" || name == "." {
			continue
		}
		child, err := folder.CreateFolder(ctx, name)
		if err != nil { // already there (DuplicateName): find it instead
			child, err = find.NewFinder(folder.Client()).Folder(ctx, folder.InventoryPath+"/"+name)
		}
		check(err)
		child.InventoryPath = folder.InventoryPath + "/" + name
		folder = child
	}
	return folder
}

func wait(task *object.Task, err error) error {
	if err != nil {
		return err
	}
	return task.Wait(context.Background())
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func main() {
	listen := flag.String("l", "127.0.0.1:8989", "listen address (port 0 picks a free port)")
	dcs := flag.Int("dc", 1, "datacenters")
	clusters := flag.Int("cluster", 1, "clusters per datacenter")
	hosts := flag.Int("host", 3, "hosts per cluster")
	bootDelay := flag.Duration("boot-delay", 5*time.Second, "time from power-on to guest info (IP, hostname, tools)")
	guestIP := flag.String("guest-ip", "127.0.0.1", "IP address every booted VM reports")
	guestAddresses := flag.String("guest-addresses", "", "comma-separated addresses (address[/state[/origin]]) every booted VM's first interface reports (guest.net)")
	template := flag.String("template", "templates/vmpool-template", "template path under each datacenter's vm folder")
	templateSnapshot := flag.String("template-snapshot", "", "name of a snapshot each template has (none when empty)")
	folders := flag.String("folders", "vmpool", "comma-separated folders to create under each vm folder")
	username := flag.String("username", "vmpool", "user name to accept")
	password := flag.String("password", "vmpool-password", "password to accept")
	certPath := flag.String("cert", "", "file to write the server's self-signed certificate (PEM) to")
	flag.StringVar(&noCloneFolder, "no-clone-folder", "", "name of folders that refuse clones with NoPermission")
	loadPerVM := flag.Float64("host-load-per-vm", 0, "percent of a host's CPU and memory each powered-on VM uses (0: static host stats)")
	flag.StringVar(&failCloneFolder, "fail-clone-folder", "", "name of folders whose clone tasks end in error (the VM is left)")
	flag.StringVar(&noCancelFolder, "no-cancel-folder", "", "name of folders whose delayed clones refuse CancelTask with NoPermission")
	flag.DurationVar(&cloneDelay, "clone-delay", 0, "how long each clone task runs before it ends")
	delays := flag.String("method-delay", "", "comma-separated Method=milliseconds delays of SOAP methods")
	sessionIdle := flag.Duration("session-idle", 0, "idle time after which a session expires (0: never)")
	flag.IntVar(&pageSize, "page-size", 0, "most objects in one RetrievePropertiesEx answer, the rest by token (0: all)")
	flag.Parse()
	simulator.SessionIdleTimeout = *sessionIdle

	model := simulator.VPX()
	model.Datacenter, model.Cluster, model.ClusterHost = *dcs, *clusters, *hosts
	model.Host, model.Machine, model.Autostart = 0, 1, false
	if *clusters == 0 {
		model.Host = *hosts // standalone hosts only
	}
	check(model.Create())
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{selfSignedCert(*certPath)}}
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}
	server := model.Service.NewServer()

	setup(context.Background(), server.URL, *template, *templateSnapshot, strings.Split(*folders, ","))
	model.DelayConfig.MethodDelay = methodDelays(*delays) // after setup: it is not slowed down
	simulator.Map.AddHandler(&entityTasks{})
	collectorRef := types.ManagedObjectReference{Type: "PropertyCollector", Value: "propertyCollector"}
	collector := simulator.Map.Get(collectorRef).(*simulator.PropertyCollector)
	simulator.Map.Put(&pagingCollector{*collector}) //nolint:govet // copying is fine: the Map entry is replaced
	var addresses []string
	if *guestAddresses != "" {
		addresses = strings.Split(*guestAddresses, ",")
	}
	go bootLoop(*bootDelay, *guestIP, addresses)
	if *loadPerVM > 0 {
		go loadLoop(*loadPerVM)
	}

	shown := *server.URL
	shown.User = nil // never print the password
	fmt.Printf("VCSIM_URL=%s\n", shown.String())
	os.Stdout.Sync()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	server.Close()
}
