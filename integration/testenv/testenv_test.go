package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestSkipOrFail runs this test binary again with CI set and unset, and
// checks that the helper fails under CI=true and skips otherwise.
func TestSkipOrFail(t *testing.T) {
	if os.Getenv("TESTENV_CHILD") == "1" {
		NeedTool(t, "vmcred-no-such-tool", "apt-get install nothing")
		t.Fatal("NeedTool returned for a missing tool")
	}
	if p := NeedTool(t, "sh", "it is everywhere"); p == "" {
		t.Fatal("NeedTool found no sh")
	}
	for _, tc := range []struct{ ci, want string }{{"true", "--- FAIL"}, {"", "--- SKIP"}} {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestSkipOrFail$", "-test.v")
		cmd.Env = append(os.Environ(), "TESTENV_CHILD=1", "CI="+tc.ci)
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "apt-get install nothing") {
			t.Errorf("CI=%q: want %s with the hint, got:\n%s", tc.ci, tc.want, out)
		}
	}
}
