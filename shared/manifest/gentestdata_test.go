//go:build gentestdata

package manifest

// This file is built only with -tags gentestdata, so the package and its
// normal tests stay free of os. Regenerate the golden files with
//
//	go test -tags gentestdata -run TestWriteTestdata ./shared/manifest

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteTestdata(t *testing.T) {
	files := map[string][]byte{}
	body := mustMarshal(t, fixture(t))
	files["signed.vmce"] = mustSign(t, body, testKey(1))
	unsigned, err := WrapUnsigned(body)
	if err != nil {
		t.Fatal(err)
	}
	files["unsigned.vmce"] = unsigned
	if files["minimal.vmce"], err = WrapUnsigned(mustMarshal(t, minimal())); err != nil {
		t.Fatal(err)
	}
	if files["test-only.key"], err = MarshalPrivateKey(testKey(1)); err != nil {
		t.Fatal(err)
	}
	if files["test-only.pub"], err = MarshalPublicKey(testPub(1)); err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join("testdata", name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
