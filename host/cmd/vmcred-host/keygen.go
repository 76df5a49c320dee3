package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/vmcred/vmcred/shared/cli"
	"github.com/vmcred/vmcred/shared/manifest"
)

const keygenUsage = "vmcred-host keygen --out PREFIX"

// runKeygen writes PREFIX.key (the private key, mode 0400) and PREFIX.pub
// (mode 0444), refusing to overwrite either, and prints the key ID.
func (d deps) runKeygen(_ context.Context, env *cli.Env, args []string) error {
	var prefix string
	fl := cli.NewFlagSet("keygen")
	fl.StringVar(&prefix, "out", "", "write `PREFIX`.key (private, mode 0400) and PREFIX.pub (public, 0444); a missing folder in PREFIX is made 0700")
	if err := cli.Parse(env, fl, keygenUsage, args); err != nil {
		return err
	}
	if prefix == "" || fl.NArg() > 0 {
		return cli.Usagef("usage: %s", keygenUsage)
	}
	keyPath, pubPath := prefix+".key", prefix+".pub"
	for _, p := range []string{keyPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s already exists; refusing to overwrite a key (remove it first, or choose another --out)", p))
		} else if !errors.Is(err, fs.ErrNotExist) {
			return cli.WithCode(cli.ExitIO, err)
		}
	}
	pub, priv, err := ed25519.GenerateKey(d.rand)
	if err != nil {
		return fmt.Errorf("generate a key: %w", err)
	}
	defer clear(priv)
	privFile, err := manifest.MarshalPrivateKey(priv)
	if err != nil {
		return err
	}
	defer clear(privFile)
	pubFile, err := manifest.MarshalPublicKey(pub)
	if err != nil {
		return err
	}
	// keys/host makes keys/ (0700: it holds a private key) if missing.
	if dir := filepath.Dir(keyPath); dir != "." {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return cli.WithCode(cli.ExitIO, fmt.Errorf("create the folder for --out: %w", err))
		}
	}
	if err := createExclusive(keyPath, privFile, 0o400); err != nil {
		return cli.WithCode(cli.ExitIO, err)
	}
	if err := createExclusive(pubPath, pubFile, 0o444); err != nil {
		os.Remove(keyPath)
		return cli.WithCode(cli.ExitIO, err)
	}
	fmt.Fprintf(env.Stdout, "ed25519 key %s: private key %s, public key %s\n", manifest.KeyID(pub), keyPath, pubPath)
	return nil
}

// createExclusive creates path (never over an existing file or through a
// symlink) with exactly mode perm, writes data and fsyncs. On error the
// file is removed.
func createExclusive(path string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm)
	if err != nil {
		return err
	}
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
