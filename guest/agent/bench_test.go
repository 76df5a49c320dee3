package agent

import (
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"testing/fstest"
	"time"

	"github.com/vmcred/vmcred/guest/firmware"
	"github.com/vmcred/vmcred/shared/credential"
	"github.com/vmcred/vmcred/shared/manifest"
	"github.com/vmcred/vmcred/shared/oemstring"
	"github.com/vmcred/vmcred/shared/smbios"
)

// benchTable lays out, as QEMU does, n credentials of size bytes each
// under vmcred's prefix and a manifest listing them, signed by key: what
// `vmcred-host pack --mode verified` hands a VM.
func benchTable(b *testing.B, n, size int, key ed25519.PrivateKey) []byte {
	b.Helper()
	mb := manifest.NewBuilder("bench-vm", issued)
	strs := make([]string, 0, n+1)
	for i := range n {
		name := fmt.Sprintf("cred-%03d", i)
		v := make([]byte, size)
		for j := range v {
			v[j] = byte(i + 7*j)
		}
		if err := mb.Add(name, credential.NewSecret(v), manifest.DeliverySMBIOS, false); err != nil {
			b.Fatal(err)
		}
		s, err := oemstring.Format(oemstring.PrefixVmcred, name, credential.NewSecret(v))
		if err != nil {
			b.Fatal(err)
		}
		strs = append(strs, string(s.Reveal()))
	}
	env, err := mb.Envelope(key)
	if err != nil {
		b.Fatal(err)
	}
	s, err := oemstring.Format(oemstring.PrefixBinary, ManifestName, credential.NewSecret(env))
	if err != nil {
		b.Fatal(err)
	}
	table, err := smbios.BuildQEMUTable(append(strs, string(s.Reveal())))
	if err != nil {
		b.Fatal(err)
	}
	return table
}

// benchKey is a fixed signing key, so runs are comparable.
func benchKey() (ed25519.PublicKey, ed25519.PrivateKey) {
	priv := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	return priv.Public().(ed25519.PublicKey), priv
}

// BenchmarkReadVerify runs the guest's read → parse → verify path
// (firmware.Read of a DMI table, systemd's OEM string rules, the signed
// manifest's signature, every credential's size and SHA-256) in memory,
// without the channel and without the credstore write. The table comes
// from an fstest.MapFS, so no file system is involved; MB/s is table
// bytes. 254 credentials and the manifest are 255 OEM strings, the most
// one type-11 structure can count (the host moves more to the channel);
// "table=60KiB" is 254 credentials whose values fill the table to about
// 60 KiB, near the 65535-byte limit of SMBIOS 2.x's entry point.
func BenchmarkReadVerify(b *testing.B) {
	pub, priv := benchKey()
	for _, tc := range []struct {
		name    string
		n, size int
	}{
		{"creds=1", 1, 32},
		{"creds=100", 100, 32},
		{"creds=254", 254, 32},
		{"table=60KiB", 254, 111},
	} {
		b.Run(tc.name, func(b *testing.B) {
			table := benchTable(b, tc.n, tc.size, priv)
			fsys := fstest.MapFS{"DMI": {Data: table}}
			cfg := Config{Root: fsys, Firmware: firmware.Options{DMITable: "DMI"}, TrustKeys: []ed25519.PublicKey{pub}, VM: "bench-vm"}
			now := func() time.Time { return issued }
			b.SetBytes(int64(len(table)))
			b.ReportAllocs()
			for b.Loop() {
				rep := Report{Credentials: []CredentialResult{}, Skipped: []Skipped{}}
				v, err := readVerify(cfg, now, &rep, nil)
				if err != nil {
					b.Fatal(err)
				}
				if len(v.expose) != tc.n || rep.Policy != PolicySignature {
					b.Fatalf("%d exposed, policy %s", len(v.expose), rep.Policy)
				}
			}
			b.ReportMetric(float64(len(table)), "table-bytes")
		})
	}
}

// BenchmarkLoad100 is a whole Load of 100 signed 32-byte credentials from
// a table file into a credstore on /dev/shm, status file included: the
// in-process part of `vmcred-guest load` (BENCHMARKS.md times the
// process). "fresh" starts from an empty credstore, as at boot; "replace"
// loads into the credstore the previous iteration wrote.
func BenchmarkLoad100(b *testing.B) {
	pub, priv := benchKey()
	for _, fresh := range []bool{true, false} {
		name := "replace"
		if fresh {
			name = "fresh"
		}
		b.Run(name, func(b *testing.B) {
			dir, err := os.MkdirTemp("/dev/shm", "vmcred-agent-bench-")
			if err != nil {
				b.Skipf("no /dev/shm tmpfs here: %v", err)
			}
			b.Cleanup(func() { os.RemoveAll(dir) })
			tab := filepath.Join(dir, "DMI")
			if err := os.WriteFile(tab, benchTable(b, 100, 32, priv), 0o600); err != nil {
				b.Fatal(err)
			}
			cfg := Config{Root: os.DirFS("/"), Firmware: firmware.Options{DMITable: tab[1:]}, Credstore: filepath.Join(dir, "credstore"),
				StatusDir: filepath.Join(dir, "status"), TrustKeys: []ed25519.PublicKey{pub}, VM: "bench-vm", Now: func() time.Time { return issued }}
			b.ReportAllocs()
			for b.Loop() {
				if fresh {
					b.StopTimer()
					os.RemoveAll(cfg.Credstore)
					os.RemoveAll(cfg.StatusDir)
					b.StartTimer()
				}
				if _, err := Load(cfg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
