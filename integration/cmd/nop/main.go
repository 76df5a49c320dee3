// Command nop starts and exits doing nothing: the baseline of issue 9's
// load target ("within twice the time of starting a static Go binary that
// does nothing"). Build it as the Makefile builds vmcred's binaries
// (CGO_ENABLED=0, -trimpath, -ldflags '-s -w'); integration/bench-load.sh
// does.
package main

func main() {}
