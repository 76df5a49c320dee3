package source

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmcred/vmcred/shared/credential"
)

// TestCanaryNeverInMessages writes a random secret into files and flags and
// drives every error and warning path; no message may contain it.
func TestCanaryNeverInMessages(t *testing.T) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	canary := "canary-" + hex.EncodeToString(b)

	tmp := t.TempDir()
	good := writeFile(t, filepath.Join(tmp, "good"), canary)
	// Over the limit, starting with the canary.
	big := filepath.Join(tmp, "big")
	if err := os.WriteFile(big, []byte(canary+strings.Repeat("x", credential.MaxSize)), 0o400); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tmp, "dir")
	writeFile(t, filepath.Join(dir, "good"), canary)
	writeFile(t, filepath.Join(dir, ".hidden"), canary)
	writeFile(t, filepath.Join(dir, "bad:name"), canary)
	mkfifo(t, filepath.Join(dir, "fifo"))
	if err := os.Symlink(good, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	// Unreadable when the tests run as a normal user (root reads it anyway).
	locked := writeFile(t, filepath.Join(tmp, "locked"), canary)
	if err := os.Chmod(locked, 0); err != nil {
		t.Fatal(err)
	}
	credsDir := filepath.Join(tmp, "creds")
	writeFile(t, filepath.Join(credsDir, "good"), canary)

	var messages []string
	check := func(what string, creds []Credential, warnings []Warning, err error) {
		if err != nil {
			messages = append(messages, what+": "+err.Error())
		}
		for _, w := range warnings {
			messages = append(messages, what+": "+w.String(), fmt.Sprintf("%s: %+v", what, w))
		}
		// Printing credentials, as a careless caller might, shows no value.
		messages = append(messages, fmt.Sprintf("%s: %v %+v %#v", what, creds, creds, creds))
	}

	for _, args := range [][]string{
		{"--cred", "api-key=" + canary},
		{"--cred", canary},
		{"--cred", "api-key=env:" + canary},
		{"--cred", "api-key=literal:" + canary},
		{"--static", canary},
	} {
		_, err := parse(t, args...)
		if err == nil {
			t.Errorf("%q parsed, want an error", args)
			continue
		}
		messages = append(messages, "flags: "+err.Error())
	}

	for _, tc := range []struct {
		what  string
		specs []Spec
		env   Env
	}{
		{"good", []Spec{{Kind: File, Name: "good", Path: good}}, Env{}},
		{"big", []Spec{{Kind: File, Name: "big", Path: big}}, Env{}},
		{"dir", []Spec{{Kind: Dir, Path: dir}}, Env{}},
		{"duplicate", []Spec{{Kind: File, Name: "good", Path: good}, {Kind: Dir, Path: dir}}, Env{}},
		{"creds dir", []Spec{{Kind: CredentialsDirectory}}, envWith(credsDir)},
		{"creds dir missing name", []Spec{{Kind: CredentialsDirectory, Names: []string{"nope"}}}, envWith(credsDir)},
		{"creds dir unset", []Spec{{Kind: CredentialsDirectory}}, envWith("")},
		{"missing", []Spec{{Kind: File, Name: "x", Path: filepath.Join(tmp, "missing")}}, Env{}},
		{"not regular", []Spec{{Kind: File, Name: "x", Path: dir}}, Env{}},
		{"locked", []Spec{{Kind: File, Name: "x", Path: locked}}, Env{}},
	} {
		withTimeout(t, func() {
			creds, warnings, err := Collect(tc.specs, tc.env)
			check("Collect "+tc.what, creds, warnings, err)
			items, warnings, err := Check(tc.specs, tc.env)
			messages = append(messages, fmt.Sprintf("Check %s: %+v", tc.what, items))
			check("Check "+tc.what, nil, warnings, err)
		})
	}

	errorsSeen := 0
	for _, m := range messages {
		if strings.Contains(m, canary) {
			// Print where, not the message: it holds the secret.
			t.Errorf("a message contains the secret: %q…", m[:min(len(m), strings.Index(m, canary))])
		}
		if strings.Contains(m, "error") || strings.Contains(m, "read credential") || strings.Contains(m, "skipped") {
			errorsSeen++
		}
	}
	if errorsSeen < 10 {
		t.Errorf("only %d messages came from error or warning paths; the test no longer exercises them", errorsSeen)
	}
}
