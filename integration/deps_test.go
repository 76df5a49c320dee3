package integration

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/vmcred/vmcred"

// godbus is the D-Bus library guest/consumers reaches systemd with.
const godbus = "github.com/godbus/dbus/v5"

type listedPackage struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func listPackages(t *testing.T) []listedPackage {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json", module+"/...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Dir = ".."
	if err := cmd.Start(); err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []listedPackage
	dec := json.NewDecoder(out)
	for {
		var p listedPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list: %v", err)
	}
	if len(pkgs) < 5 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

func under(pkg, dir string) bool {
	p := module + "/" + dir
	return pkg == p || strings.HasPrefix(pkg, p+"/")
}

// TestDependencyRules enforces DESIGN §2 and style.md habit 10: the guest
// never imports host code or os/exec, the host never imports guest code, and
// shared packages stay free of OS and network access.
func TestDependencyRules(t *testing.T) {
	osImports := map[string]bool{
		"os": true, "os/exec": true, "os/signal": true, "os/user": true, "syscall": true,
		"net": true, "net/http": true, "golang.org/x/sys/unix": true,
		"github.com/mdlayher/vsock": true, "github.com/coreos/go-systemd/v22/daemon": true,
		"github.com/coreos/go-systemd/v22/journal": true, "github.com/coreos/go-systemd/v22/activation": true,
	}
	// guestHeavy are packages the guest binary must not link: see
	// BENCHMARKS.md (binary size, load time).
	guestHeavy := map[string]bool{"net/http": true, "crypto/tls": true, "crypto/x509": true, "go.uber.org/zap": true}
	checked := map[string]int{}
	for _, p := range listPackages(t) {
		switch {
		case under(p.ImportPath, "guest"):
			checked["guest"]++
			for _, d := range p.Deps {
				if under(d, "host") {
					t.Errorf("%s depends on %s: the guest must not import host code", p.ImportPath, d)
				}
				// godbus links os/exec for one path, autolaunching a
				// session bus (dbus-launch), which guest/consumers never
				// takes: it dials systemd's private socket or the system
				// bus. Only that route is allowed.
				if d == "os/exec" && !(slices.Contains(p.Deps, godbus) && !slices.Contains(p.Imports, "os/exec")) {
					t.Errorf("%s depends on os/exec: the guest agent runs no programs", p.ImportPath)
				}
				if guestHeavy[d] {
					t.Errorf("%s depends on %s: the guest agent speaks no HTTP or TLS, and the package (pulled in by go.uber.org/zap, use shared/logging) adds 1 MB and ~0.25 ms to every start", p.ImportPath, d)
				}
			}
		case under(p.ImportPath, "host"):
			checked["host"]++
			for _, d := range p.Deps {
				if under(d, "guest") {
					t.Errorf("%s depends on %s: the host must not import guest code", p.ImportPath, d)
				}
			}
		case under(p.ImportPath, "shared"):
			checked["shared"]++
			for _, i := range p.Imports {
				if p.ImportPath == module+"/shared/harden" && (i == "syscall" || i == "golang.org/x/sys/unix") {
					// The one exception: process hardening (prctl,
					// setrlimit) that both binaries call from main.
					continue
				}
				if osImports[i] || strings.HasPrefix(i, "net/") {
					t.Errorf("%s imports %s: shared packages are OS-free", p.ImportPath, i)
				}
			}
			for _, d := range p.Deps {
				if under(d, "host") || under(d, "guest") || d == "os/exec" || d == "github.com/mdlayher/vsock" {
					t.Errorf("%s depends on %s", p.ImportPath, d)
				}
			}
		}
	}
	for _, dir := range []string{"guest", "host", "shared"} {
		if checked[dir] == 0 {
			t.Errorf("no packages found under %s/: the rule checked nothing", dir)
		}
	}
}
