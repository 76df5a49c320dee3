package launch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/vmcred/vmcred/shared/credential"
)

// CH API defaults.
const (
	// DefaultSocketWait is how long CHBoot waits for the API socket.
	DefaultSocketWait = 30 * time.Second
	// DefaultRequestTimeout bounds each API request.
	DefaultRequestTimeout = 30 * time.Second
	// maxResponse caps the response body read for an error message.
	maxResponse = 4096
	// pollInterval is how often CHBoot tries the socket.
	pollInterval = 20 * time.Millisecond
)

// ErrChildExited means the child exited before its API socket answered.
var ErrChildExited = errors.New("hypervisor exited before its api socket answered")

// CHBoot drives cloud-hypervisor's REST API on the Unix socket: it waits
// until the socket accepts connections (or the child exits, or wait
// passes), then sends PUT /api/v1/vm.create with body and PUT
// /api/v1/vm.boot, each expecting a 2xx answer.
//
// body holds secrets: it is sent only over the socket, which cloud-
// hypervisor creates with its own umask (protect the directory), and it
// never appears in errors, which quote at most the server's answer with
// every OEM string of body redacted.
func CHBoot(ctx context.Context, socket string, body credential.Secret, exited <-chan struct{}, wait time.Duration) error {
	if wait <= 0 {
		wait = DefaultSocketWait
	}
	if err := waitSocket(ctx, socket, exited, wait); err != nil {
		return err
	}
	client := &http.Client{
		Timeout: DefaultRequestTimeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			DisableKeepAlives: true,
		},
	}
	defer client.CloseIdleConnections()
	if err := put(ctx, client, "/api/v1/vm.create", body); err != nil {
		return err
	}
	return put(ctx, client, "/api/v1/vm.boot", credential.Secret{})
}

func waitSocket(ctx context.Context, socket string, exited <-chan struct{}, wait time.Duration) error {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var last error
	for {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := d.DialContext(dctx, "unix", socket)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for cloud-hypervisor api socket %s: %w", socket, ctx.Err())
		case <-exited:
			return fmt.Errorf("cloud-hypervisor api socket %s: %w", socket, ErrChildExited)
		case <-deadline.C:
			return fmt.Errorf("cloud-hypervisor api socket %s did not answer within %v (is --api-socket path=%s on its command line?): %w", socket, wait, socket, last)
		case <-tick.C:
		}
	}
}

func put(ctx context.Context, client *http.Client, path string, body credential.Secret) error {
	var r io.Reader = http.NoBody
	if body.Len() > 0 {
		r = bytes.NewReader(body.Reveal())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://localhost"+path, r)
	if err != nil {
		return fmt.Errorf("cloud-hypervisor api PUT %s: %w", path, err)
	}
	if body.Len() > 0 {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("cloud-hypervisor api PUT %s: %w", path, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("cloud-hypervisor api PUT %s: %s: %s", path, resp.Status, redact(msg, body))
	}
	return nil
}

// redact returns the server's answer for an error message with anything
// that looks like part of the request body removed: the answer is cut at
// the first byte that is not printable ASCII, and if any 16-byte window of
// it occurs in the request body, it is replaced by a note.
func redact(msg []byte, body credential.Secret) string {
	msg = bytes.TrimSpace(msg)
	for i, c := range msg {
		if c < 0x20 || c > 0x7e {
			msg = msg[:i]
			break
		}
	}
	const window = 16
	b := body.Reveal()
	for i := 0; i+window <= len(msg); i++ {
		if bytes.Contains(b, msg[i:i+window]) {
			return fmt.Sprintf("(%d-byte answer not shown: it quotes the request)", len(msg))
		}
	}
	if len(msg) > 300 {
		msg = append(msg[:300:300], "…"...)
	}
	return string(msg)
}
