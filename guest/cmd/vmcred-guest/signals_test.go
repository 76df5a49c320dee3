package main

import (
	"context"
	"syscall"
	"testing"
	"time"
)

// TestLazySignalContext: nothing is subscribed until Done; after it, a
// signal cancels the context and every context derived from it; after
// release, the subscription is gone.
func TestLazySignalContext(t *testing.T) {
	ctx, release := newLazySignalContext(syscall.SIGUSR1)
	l := ctx.(*lazySignalContext)
	if l.subscribed() != nil || ctx.Err() != nil || ctx.Value("k") != nil {
		t.Fatal("subscribed or cancelled before anything waited on it")
	}
	if _, ok := ctx.Deadline(); ok {
		t.Error("Deadline reports one")
	}

	derived, cancelDerived := context.WithTimeout(ctx, time.Minute) // calls Done
	defer cancelDerived()
	if l.subscribed() == nil {
		t.Fatal("deriving a context did not subscribe")
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-derived.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("SIGUSR1 did not cancel the derived context")
	}
	if ctx.Err() != context.Canceled {
		t.Errorf("Err() = %v after the signal, want context.Canceled", ctx.Err())
	}
	release()
	release() // twice is harmless
}

// TestLazySignalContextRelease: a context released before any Done never
// subscribes, and release after a subscription stops it.
func TestLazySignalContextRelease(t *testing.T) {
	ctx, release := newLazySignalContext(syscall.SIGUSR2)
	release()
	if ctx.(*lazySignalContext).subscribed() != nil {
		t.Error("release subscribed")
	}
	ctx2, release2 := newLazySignalContext(syscall.SIGUSR2)
	_ = ctx2.Done()
	release2()
	if err := ctx2.Err(); err != context.Canceled {
		// signal.NotifyContext's stop cancels the context.
		t.Errorf("Err() after release = %v, want context.Canceled", err)
	}
}
