// Command ca measures the mesh CA's certificate signing rate (ECDSA P-256
// workload keys, self-signed ECDSA P-256 root).
//
// It builds a real Authority over a bolt store in a temporary directory
// and measures, for each worker count in -workers, for -duration each:
//
//   - sign: Authority.Sign called directly (CSR parse and signature check,
//     certificate signing, PEM encoding);
//   - grpc-token: IstioCertificateService/CreateCertificate over the real
//     gRPC service on a loopback TLS listener, authenticated with a
//     bootstrap token (one store read per request), one connection per
//     worker;
//   - grpc-cert: the same, authenticated by the worker's workload
//     certificate (renewal: chain verification per request).
//
// CSRs (and their keys) are generated before the clock starts: key
// generation is the client's cost. Clients and server share the process
// and its CPUs, so the gRPC figures include the client side.
//
// Usage:
//
//	go run ./bench/ca -workers 1,2 -duration 3s
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/weftmesh/weft/internal/ca"
	"github.com/weftmesh/weft/internal/pki"
	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
	"github.com/weftmesh/weft/internal/store/bolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	securitypb "istio.io/api/security/v1alpha1"
)

func main() {
	workers := flag.String("workers", "1,2", "comma-separated worker counts")
	duration := flag.Duration("duration", 3*time.Second, "measurement time per mode and worker count")
	csrs := flag.Int("csrs", 256, "distinct CSRs generated up front and used round-robin")
	flag.Parse()
	var counts []int
	for _, s := range strings.Split(*workers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "ca bench: invalid -workers %q\n", *workers)
			os.Exit(2)
		}
		counts = append(counts, n)
	}
	if err := run(counts, *duration, *csrs); err != nil {
		fmt.Fprintln(os.Stderr, "ca bench: FAILED:", err)
		os.Exit(1)
	}
}

type env struct {
	a      *ca.Authority
	addr   string
	pool   *x509.CertPool
	token  string
	csrs   [][]byte
	client tls.Certificate
}

func run(counts []int, d time.Duration, ncsr int) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "weft-ca-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	st, err := bolt.Open(filepath.Join(dir, "weft.db"), store.Options{}, nil)
	if err != nil {
		return err
	}
	defer st.Close()
	a, err := ca.New(ctx, st, ca.Options{KEKFile: filepath.Join(dir, ca.KEKFileName)}, nil)
	if err != nil {
		return err
	}
	wg, _ := resource.ByKind("networking.istio.io/v1", "WorkloadGroup")
	raw, _ := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"serviceAccount": "bench"}}})
	if _, err := st.Create(ctx, wg.Key("default", "bench"), raw); err != nil {
		return err
	}
	e := &env{a: a}
	if e.token, _, err = a.IssueBootstrapToken(ctx, "default", "bench", "", time.Hour); err != nil {
		return err
	}
	for range ncsr {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			return err
		}
		e.csrs = append(e.csrs, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
		if e.client.PrivateKey == nil {
			chain, err := a.Sign(der, ca.Identity{Namespace: "default", ServiceAccount: "bench"}, 0)
			if err != nil {
				return err
			}
			e.client.PrivateKey = key
			for _, p := range chain {
				b, _ := pem.Decode([]byte(p))
				e.client.Certificate = append(e.client.Certificate, b.Bytes)
			}
		}
	}
	stop, err := e.serve(dir)
	if err != nil {
		return err
	}
	defer stop()

	fmt.Printf("CA signing rate, ECDSA P-256 (go run ./bench/ca -workers %s -duration %s)\n",
		strings.Trim(strings.Join(strings.Fields(fmt.Sprint(counts)), ","), "[]"), d)
	fmt.Printf("date %s, %s/%s, GOMAXPROCS %d, %s\n\n", time.Now().UTC().Format("2006-01-02"), runtime.GOOS, runtime.GOARCH,
		runtime.GOMAXPROCS(0), runtime.Version())
	fmt.Println("| mode | workers | signatures/s | p50 | p99 |")
	fmt.Println("|---|---:|---:|---:|---:|")
	for _, mode := range []string{"sign", "grpc-token", "grpc-cert"} {
		for _, n := range counts {
			r, err := e.measure(mode, n, d)
			if err != nil {
				return fmt.Errorf("%s with %d workers: %w", mode, n, err)
			}
			fmt.Printf("| %s | %d | %.0f | %s | %s |\n", mode, n, r.rate, r.p50, r.p99)
		}
	}
	return nil
}

// serve starts the CSR service on a loopback TLS listener.
func (e *env) serve(dir string) (func(), error) {
	sca, _, err := pki.LoadOrCreateCA(dir, "bench-serving-ca", time.Now())
	if err != nil {
		return nil, err
	}
	cert, err := sca.Issue("weft", nil, []string{"127.0.0.1"}, time.Hour, time.Now())
	if err != nil {
		return nil, err
	}
	e.pool = sca.Pool()
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(e.a.ServerTLS(&tls.Config{
		MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"},
	}))))
	ca.NewService(e.a, ca.ServiceOptions{}, nil).Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.addr = ln.Addr().String()
	go g.Serve(ln)
	return g.Stop, nil
}

type result struct {
	rate     float64
	p50, p99 time.Duration
}

// measure runs n workers of mode for d and returns the signing rate and
// per-request latency.
func (e *env) measure(mode string, n int, d time.Duration) (result, error) {
	type worker struct {
		call func(csr []byte) error
		lat  []time.Duration
		err  error
	}
	ws := make([]*worker, n)
	for i := range ws {
		w := &worker{}
		switch mode {
		case "sign":
			id := ca.Identity{Namespace: "default", ServiceAccount: "bench"}
			w.call = func(csr []byte) error { _, err := e.a.Sign(csr, id, 0); return err }
		default:
			cfg := &tls.Config{RootCAs: e.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
			ctx := context.Background()
			if mode == "grpc-cert" {
				cfg.Certificates = []tls.Certificate{e.client}
			} else {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+e.token)
			}
			cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
			if err != nil {
				return result{}, err
			}
			defer cc.Close()
			c := securitypb.NewIstioCertificateServiceClient(cc)
			w.call = func(csr []byte) error {
				resp, err := c.CreateCertificate(ctx, &securitypb.IstioCertificateRequest{Csr: string(csr)})
				if err == nil && len(resp.CertChain) < 2 {
					err = fmt.Errorf("short chain")
				}
				return err
			}
			if err := w.call(e.csrs[0]); err != nil { // connect before the clock starts
				return result{}, err
			}
		}
		ws[i] = w
	}
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := i; time.Now().Before(deadline); j += n {
				t0 := time.Now()
				if err := w.call(e.csrs[j%len(e.csrs)]); err != nil {
					w.err = err
					return
				}
				w.lat = append(w.lat, time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for _, w := range ws {
		if w.err != nil {
			return result{}, w.err
		}
		all = append(all, w.lat...)
	}
	slices.Sort(all)
	if len(all) == 0 {
		return result{}, fmt.Errorf("no request completed")
	}
	q := func(p float64) time.Duration { return all[int(p*float64(len(all)-1))].Round(time.Microsecond) }
	return result{rate: float64(len(all)) / elapsed.Seconds(), p50: q(0.5), p99: q(0.99)}, nil
}
