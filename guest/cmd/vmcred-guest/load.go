package main

import (
	"context"

	"github.com/vmcred/vmcred/shared/cli"
)

func runLoad(ctx context.Context, env *cli.Env, args []string) error {
	return cli.Usagef("load: not built yet")
}
