package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBadInputs: each bad input exits with its DESIGN §7 code, logs an
// error naming the credential, the file or the limit, and writes nothing.
func TestBadInputs(t *testing.T) {
	tests := []struct {
		name string
		// args after "pack --vm test-vm --runtime-dir RT"; @TMP@ is the
		// test's directory, @BIG@ a 1 MiB + 1 file, @SMALL@ a 1000-byte
		// file, @LARGE@ a 40000-byte file.
		args []string
		code int
		want []string
	}{
		{"missing file", []string{"--hypervisor", "qemu", "--cred", "api-key=file:@TMP@/nope"},
			3, []string{`read credential "api-key" from @TMP@/nope`, "no such file or directory"}},
		{"fw_cfg name over 28 bytes", []string{"--hypervisor", "qemu-microvm", "--cred", "ssh.ephemeral-authorized_keys-all=file:@SMALL@"},
			1, []string{`"ssh.ephemeral-authorized_keys-all"`, "1000 bytes", "is 60 bytes, over QEMU's 55-byte limit", "name is 33 bytes", "allows 28", "--hypervisor qemu with -machine q35", "channel"}},
		{"credential over 1 MiB", []string{"--hypervisor", "qemu", "--cred", "huge=file:@BIG@"},
			1, []string{`"huge"`, "1048577 bytes", "over systemd's 1048576-byte limit", "--overflow channel"}},
		{"table over 65535", []string{"--hypervisor", "qemu", "--cred", "a=file:@LARGE@", "--cred", "b=file:@LARGE@"},
			1, []string{`credential "b" (40000 bytes)`, "over the limit of 63487", "65535", "--overflow channel"}},
		{"table over 65535 in a dmi file", []string{"--hypervisor", "dmi", "--out", "@TMP@/out.dmi", "--cred", "a=file:@LARGE@", "--cred", "b=file:@LARGE@"},
			1, []string{`credential "b" (40000 bytes)`, "over the limit of 65535"}},
		{"bad notify socket", []string{"--hypervisor", "qemu", "--static", "a=b", "--notify-socket", "tcp:1.2.3.4:5"}, 2, []string{"--notify-socket"}},
		{"manifest by channel is gone", []string{"--hypervisor", "cloud-hypervisor", "--manifest-by-channel", "--static", "a=b"}, 2, []string{"unknown flag: --manifest-by-channel"}},
		{"channel is gone", []string{"--hypervisor", "firecracker", "--channel", "unix:/run/x.vsock_9", "--static", "a=b"}, 2, []string{"unknown flag: --channel"}},
		{"ch-api on qemu", []string{"--hypervisor", "qemu", "--ch-api", "/x"}, 2, []string{"cloud-hypervisor only"}},
		{"reserved name", []string{"--hypervisor", "qemu", "--static", "vmcred.manifest=x"}, 2, []string{"reserved"}},
		{"'=' in a --cred name", []string{"--hypervisor", "qemu", "--cred", "x=y=file:@SMALL@"},
			2, []string{`credential "x=y"`, "may not contain '='", "split at the first '='"}},
		{"'=' in a --cred-dir file name", []string{"--hypervisor", "qemu", "--cred-dir", "@TMP@/eqdir"},
			2, []string{`credential "a=b"`, "@TMP@/eqdir/a=b", "may not contain '='"}},
		{"VM name with a space", []string{"--vm", "we b", "--hypervisor", "qemu", "--static", "a=b"}, 2, []string{`--vm "we b": byte 3 is a space`}},
		{"VM name starting with '-'", []string{"--vm=-x", "--hypervisor", "qemu", "--static", "a=b"}, 2, []string{`--vm "-x": byte 1`}},
		{"over 1 MiB without a channel says what to add", []string{"--hypervisor", "qemu", "--cred", "huge=file:@BIG@"},
			1, []string{"add --overflow channel to send it by channel"}},
		{"unknown hypervisor names every choice", []string{"--hypervisor", "xen"}, 2, []string{"firecracker, json or dmi"}},
		{"unsafe runtime dir", []string{"--hypervisor", "qemu", "--cred", "k=file:@SMALL@", "--runtime-dir", "@TMP@/open"},
			3, []string{"@TMP@/open is mode 0777", "writable by group or others"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := t.TempDir()
			if err := os.Mkdir(filepath.Join(tmp, "open"), 0o700); err != nil {
				t.Fatal(err)
			}
			os.Chmod(filepath.Join(tmp, "open"), 0o777)
			if err := os.Mkdir(filepath.Join(tmp, "eqdir"), 0o700); err != nil {
				t.Fatal(err)
			}
			secretFile(t, filepath.Join(tmp, "eqdir"), "a=b", []byte("x"))
			repl := strings.NewReplacer(
				"@TMP@", tmp,
				"@BIG@", secretFile(t, tmp, "big", make([]byte, 1<<20+1)),
				"@SMALL@", secretFile(t, tmp, "small", make([]byte, 1000)),
				"@LARGE@", secretFile(t, tmp, "large", make([]byte, 40000)),
			)
			rt := filepath.Join(tmp, "run")
			args := []string{"pack", "--vm", "test-vm", "--runtime-dir", rt}
			for _, a := range tt.args {
				args = append(args, repl.Replace(a))
			}
			before := listFiles(t, tmp)
			h := newHarness(t)
			code := h.run(args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d; log: %s", code, tt.code, h.log.String())
			}
			log := h.log.String()
			for _, w := range tt.want {
				if w = repl.Replace(w); !strings.Contains(log, w) {
					t.Errorf("log %q does not contain %q", log, w)
				}
			}
			if strings.Contains(log, "hunter2") {
				t.Errorf("log echoes the literal value")
			}
			if h.stdout.String() != "" {
				t.Errorf("stdout %q, want nothing", h.stdout.String())
			}
			if _, err := os.Stat(rt); !os.IsNotExist(err) {
				t.Errorf("runtime directory %s exists after the error: %v", rt, err)
			}
			after := listFiles(t, tmp)
			for p := range after {
				if _, ok := before[p]; !ok {
					t.Errorf("%s was written", p)
				}
			}
			if entries, _ := os.ReadDir(filepath.Join(tmp, "open")); len(entries) != 0 {
				t.Errorf("wrote into the unsafe runtime dir")
			}
		})
	}
}
