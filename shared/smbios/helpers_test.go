package smbios

import (
	"encoding/base64"
	"fmt"
	"strings"
)

// oemStrings returns n distinct credential strings, each exactly size bytes
// (size must be at least 40).
func oemStrings(n, size int) []string {
	out := make([]string, n)
	for i := range out {
		s := fmt.Sprintf("io.systemd.credential:s%04d=", i)
		out[i] = s + strings.Repeat(string(rune('a'+i%26)), size-len(s))
	}
	return out
}

// realisticStrings are the OEM strings a vmcred host would emit for one VM:
// binary credentials, a text one, and a string from someone else that
// readers must pass through untouched.
func realisticStrings() []string {
	blob := make([]byte, 300)
	for i := range blob {
		blob[i] = byte(i)
	}
	return []string{
		"io.systemd.credential.binary:api-key=" + base64.StdEncoding.EncodeToString([]byte("s3cr3t-test-vector\n")),
		"io.systemd.credential.binary:blob=" + base64.StdEncoding.EncodeToString(blob),
		"io.systemd.credential:kv=a=b,c=d,,e==",
		"io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888",
		"  leading and trailing spaces  ",
		"vendor-specific OEM string",
	}
}

// mustBuild is BuildTable for inputs known to be valid.
func mustBuild(oem [][]string, opts BuildOptions) []byte {
	b, err := BuildTable(oem, opts)
	if err != nil {
		panic(err)
	}
	return b
}

// table300 is one type-11 structure of 300 strings (count byte wrapped to
// 44), as QEMU emits for 300 values, then type 127.
func table300() []byte {
	b := AppendStructure(nil, TypeOEMStrings, HandleOEMBase, []byte{300 % 256}, oemStrings(300, 40))
	return AppendStructure(b, TypeEndOfTable, HandleEndOfTable, nil, nil)
}

// realisticTable is a q35-like table: types 0 and 1, then two type-11
// structures, then type 127.
func realisticTable() []byte {
	return mustBuild([][]string{realisticStrings(), {"io.systemd.credential:second=structure"}}, BuildOptions{Platform: true})
}
