// Command vsockprobe runs inside the tier-1 test guest (never on the host
// that runs the tests): it checks the fact DESIGN §8 rests on and plays a
// replaying attacker against the agent, over AF_VSOCK in the guest.
//
//	vsockprobe bind PORT UID       bind AF_VSOCK PORT as UID; print "bind PORT uid UID: ok|EACCES|EADDRINUSE|<error>"
//	vsockprobe replay CID PORT FILE  dial the agent, send FILE (a manifest recorded from an earlier session) as this session's, print the REPORT
//	vsockprobe older CID PORT KEY VM  dial the agent, sign a manifest for VM with KEY for this session but the generation below the agent's, print the REPORT
package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"
	proto "github.com/vmcred/vmcred/shared/channel"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: vsockprobe bind PORT UID | replay CID PORT FILE")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "bind":
		bind(num(os.Args[2]), num(os.Args[3]))
	case "replay":
		replay(num(os.Args[2]), num(os.Args[3]), os.Args[4])
	case "older":
		older(num(os.Args[2]), num(os.Args[3]), os.Args[4], os.Args[5])
	default:
		os.Exit(2)
	}
}

func num(s string) uint32 {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	return uint32(n)
}

func bind(port, uid uint32) {
	if int(uid) != os.Getuid() {
		// Drop every privilege: groups, gid, uid (all threads).
		if err := syscall.Setgroups(nil); err != nil {
			fmt.Println("setgroups:", err)
			os.Exit(1)
		}
		if err := syscall.Setresgid(int(uid), int(uid), int(uid)); err != nil {
			fmt.Println("setresgid:", err)
			os.Exit(1)
		}
		if err := syscall.Setresuid(int(uid), int(uid), int(uid)); err != nil {
			fmt.Println("setresuid:", err)
			os.Exit(1)
		}
	}
	// CID ANY without asking /dev/vsock (mode 0600: an unprivileged
	// process could not open it, which would hide the bind's own answer).
	l, err := vsock.ListenContextID(0xFFFFFFFF, port, nil)
	res := "ok"
	switch {
	case err == nil:
		l.Close()
	case errors.Is(err, syscall.EACCES):
		res = "EACCES"
	case errors.Is(err, syscall.EADDRINUSE):
		res = "EADDRINUSE"
	default:
		res = err.Error()
	}
	fmt.Printf("bind %d uid %d: %s\n", port, os.Getuid(), res)
}

func replay(cid, port uint32, file string) {
	recorded, err := os.ReadFile(file)
	if err != nil {
		fmt.Println("replay:", err)
		os.Exit(1)
	}
	c, err := vsock.Dial(cid, port, nil)
	if err != nil {
		fmt.Println("replay: dial:", err)
		os.Exit(1)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := proto.ReadMagic(c); err != nil {
		fmt.Println("replay:", err)
		os.Exit(1)
	}
	h := proto.NewHost(c)
	if _, err := h.ReadChallenge(); err != nil {
		fmt.Println("replay:", err)
		os.Exit(1)
	}
	if err := h.WriteManifest(recorded); err != nil {
		fmt.Println("replay:", err)
		os.Exit(1)
	}
	rep, err := h.ReadReport()
	if err != nil {
		fmt.Println("replay:", err)
		os.Exit(1)
	}
	fmt.Printf("replay: outcome %s: %s\n", rep.Outcome, rep.Summary)
}

// older plays a host whose state is behind the agent's: a manifest signed
// by the trusted KEY, for this session's challenge and this VM, but for
// the generation below the one the agent holds. The agent must refuse it
// before reading any value.
func older(cid, port uint32, keyFile, vm string) {
	b, err := os.ReadFile(keyFile)
	if err != nil {
		fmt.Println("older:", err)
		os.Exit(1)
	}
	key, err := manifest.ParsePrivateKey(b)
	if err != nil {
		fmt.Println("older:", err)
		os.Exit(1)
	}
	c, err := vsock.Dial(cid, port, nil)
	if err != nil {
		fmt.Println("older: dial:", err)
		os.Exit(1)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := proto.ReadMagic(c); err != nil {
		fmt.Println("older:", err)
		os.Exit(1)
	}
	h := proto.NewHost(c)
	ch, err := h.ReadChallenge()
	if err != nil || ch.Generation == 0 {
		fmt.Println("older: challenge:", err, "generation", ch.Generation)
		os.Exit(1)
	}
	mb := manifest.NewBuilder(vm, time.Now())
	mb.SetSession(ch.Nonce, ch.Generation-1)
	v := credential.NewSecret([]byte("older-generation-value"))
	if err := mb.Add("API_KEY", v, manifest.DeliveryChannel, false); err != nil {
		fmt.Println("older:", err)
		os.Exit(1)
	}
	env, err := mb.Envelope(key)
	if err != nil {
		fmt.Println("older:", err)
		os.Exit(1)
	}
	if err := h.WriteManifest(env); err != nil {
		fmt.Println("older:", err)
		os.Exit(1)
	}
	_ = h.WriteCredentials([]proto.Credential{{Name: "API_KEY", Value: v}})
	rep, err := h.ReadReport()
	if err != nil {
		fmt.Println("older:", err)
		os.Exit(1)
	}
	fmt.Printf("older: generation %d against %d: outcome %s: %s\n", ch.Generation-1, ch.Generation, rep.Outcome, rep.Summary)
}
