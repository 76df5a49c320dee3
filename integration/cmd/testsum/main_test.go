package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestSummary feeds recorded go test -json events (a pass, a skip for a
// missing tool, a failure) and checks the plain output and the last two
// lines.
func TestSummary(t *testing.T) {
	in := `{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Package":"p","Test":"TestA","Output":"--- PASS: TestA (0.00s)\n"}
{"Action":"pass","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestSkip","Output":"=== RUN   TestSkip\n"}
{"Action":"output","Package":"p","Test":"TestSkip","Output":"    a_test.go:4: qemu-system-x86_64 not found: apt-get install qemu-system-x86\n"}
{"Action":"output","Package":"p","Test":"TestSkip","Output":"--- SKIP: TestSkip (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestSkip"}
{"Action":"output","Package":"p","Test":"TestRoot","Output":"    a_test.go:9: needs root\n"}
{"Action":"skip","Package":"p","Test":"TestRoot"}
{"Action":"output","Package":"p","Test":"TestFail","Output":"=== RUN   TestFail\n"}
{"Action":"output","Package":"p","Test":"TestFail","Output":"    a_test.go:5: boom\n"}
{"Action":"output","Package":"p","Test":"TestFail","Output":"--- FAIL: TestFail (0.00s)\n"}
{"Action":"fail","Package":"p","Test":"TestFail"}
{"Action":"output","Package":"p","Output":"FAIL\n"}
{"Action":"output","Package":"p","Output":"FAIL\tp\t0.002s\n"}
{"Action":"fail","Package":"p"}
{"Action":"output","Package":"q","Output":"PASS\n"}
{"Action":"output","Package":"q","Output":"ok  \tq\t0.1s\n"}
{"Action":"pass","Package":"q"}
`
	var out bytes.Buffer
	s := newSummary(&out)
	s.read(strings.NewReader(in))
	s.finish()
	want := "    a_test.go:5: boom\n--- FAIL: TestFail (0.00s)\nFAIL\nFAIL\tp\t0.002s\nok  \tq\t0.1s\nFAIL\n" +
		"skipped 2: needs root (1), no qemu-system-x86_64 (1); go test -v shows each hint\n1 passed, 1 failed\n"
	if out.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", out.String(), want)
	}
	if !s.pkgFailed || s.failed != 1 {
		t.Errorf("failed = %d, pkgFailed = %v", s.failed, s.pkgFailed)
	}
}
