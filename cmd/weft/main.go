// Command weft is the weft control plane (`weft server`) and operator CLI.
package main

import (
	"context"
	"os"

	"github.com/weftmesh/weft/internal/cli"
)

func main() {
	os.Exit(cli.Execute(context.Background(), os.Args[1:]))
}
