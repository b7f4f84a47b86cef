package harness

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/weftmesh/weft/internal/kubeconfig"
	"github.com/weftmesh/weft/internal/server"
	_ "github.com/weftmesh/weft/internal/store/all" // link the bolt and etcd backends
)

// Server is a weft server running in-process, with the admin credentials
// of the kubeconfig it wrote.
type Server struct {
	*server.Server
	APIAddr string      // the config API's address (host:port)
	Token   string      // the admin's bearer token
	TLS     *tls.Config // trusts the API's serving certificate

	stop       context.CancelFunc // ends Run
	cancelOpen context.CancelFunc // ends the context server.New was given
	runErr     chan error
}

// StartServer creates a server with cfg, runs it under ctx and waits up to 30 s for its API address. It logs to stderr: warnings,
// and info messages too when verbose. The caller must Stop it.
func StartServer(ctx context.Context, cfg server.Config, verbose bool) (*Server, error) {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	// server.New keeps its context for the life of the server (the xDS
	// streams end with it): no time limit of its own (the run's applies),
	// cancelled in Stop.
	openCtx, cancelOpen := context.WithCancel(ctx)
	srv, err := server.New(openCtx, cfg, logger)
	if err != nil {
		cancelOpen()
		return nil, fmt.Errorf("starting server: %w", err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	stop := func() { stopRun(); cancelOpen() }
	s := &Server{Server: srv, stop: stopRun, cancelOpen: cancelOpen, runErr: make(chan error, 1)}
	go func() { s.runErr <- srv.Run(runCtx) }()

	addrCtx, cancelAddr := context.WithTimeout(ctx, 30*time.Second)
	defer cancelAddr()
	addr := make(chan string, 1)
	go func() {
		a, _ := srv.Addr(addrCtx)
		addr <- a
	}()
	select {
	case err := <-s.runErr:
		stop()
		return nil, fmt.Errorf("server exited at start: %v", err)
	case s.APIAddr = <-addr:
	}
	if s.APIAddr == "" {
		err = errors.New("server did not report its address within 30s")
	} else {
		err = s.loadCredentials(cfg.DataDir)
	}
	if err != nil {
		_ = s.Stop()
		return nil, err
	}
	return s, nil
}

// loadCredentials reads the token and the TLS settings of the kubeconfig
// the server wrote in dataDir.
func (s *Server) loadCredentials(dataDir string) error {
	kc, err := kubeconfig.Load(filepath.Join(dataDir, server.KubeconfigFile))
	if err != nil {
		return err
	}
	rk, err := kc.Resolve("")
	if err != nil {
		return err
	}
	s.Token, s.TLS = rk.Token, rk.TLS
	return nil
}

// Stop stops the server and waits up to 30 s for it to exit; it returns
// the server's error.
func (s *Server) Stop() error {
	s.stop()
	defer s.cancelOpen()
	select {
	case err := <-s.runErr:
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("server did not stop within 30s")
	}
}
