// Command weft-proxy is weft's data plane: the sidecar and gateway that run
// beside every workload. For now it only reports its version.
package main

import (
	"fmt"
	"os"
)

// version is set at build time with -ldflags.
var version = "0.1.0-dev"

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Println("weft-proxy", version)
		return
	}
	fmt.Fprintln(os.Stderr, "weft-proxy", version+": the sidecar is not built yet; try `weft-proxy version`")
	os.Exit(2)
}
