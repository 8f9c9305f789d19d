// Command cova-dev-kbs runs the DEVELOPMENT Key Broker Service of package
// test/kbs on a laptop: KBS protocol 0.4.0 over HTTPS with a fresh
// self-signed certificate, sample and TPM evidence verified (SEV-SNP and
// TDX against the vendors' roots with -snp and -tdx), resources
// served from a directory. It is for demos and tests only: it trusts the
// sample attester, keeps its keys in memory and has no resource policy
// beyond "attested".
//
//	cova-dev-kbs -addr 0.0.0.0:8080 -resources ./kbs-resources -ca-out kbs-ca.pem -name 10.0.2.2
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/test/kbs"
)

type names []string

func (n *names) String() string     { return strings.Join(*n, ",") }
func (n *names) Set(v string) error { *n = append(*n, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cova-dev-kbs:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("cova-dev-kbs", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address")
	dir := fs.String("resources", "", "serve <dir>/<repo>/<type>/<tag> as kbs:///<repo>/<type>/<tag>")
	caOut := fs.String("ca-out", "", "write the server's self-signed certificate (PEM) here, for the guest's aa.toml/cdh.toml")
	lifetime := fs.Duration("token-lifetime", kbs.DefaultTokenLifetime, "attestation token lifetime")
	verbose := fs.Bool("v", false, "log refused requests")
	withSNP := fs.Bool("snp", false, "also verify SEV-SNP evidence against AMD's roots (embedded in go-sev-guest; the evidence must carry its VCEK chain, nothing is fetched)")
	withTDX := fs.Bool("tdx", false, "also verify TDX quotes against Intel's SGX root (embedded in go-tdx-guest; no collateral is fetched)")
	plain := fs.Bool("plain-http", false, "serve http:// (no TLS), e.g. for a guest given agent.aa_kbc_params=cc_kbc::http://10.0.2.2:PORT")
	deny := fs.String("deny", "", "resource policy: refuse (401 PolicyDeny) paths <plugin>/<path> matching this regular expression, e.g. '^resource/default/secret/'")
	var extra names
	fs.Var(&extra, "name", "extra certificate name or address (repeatable), e.g. 10.0.2.2 for a QEMU guest")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir != "" {
		if st, err := os.Stat(*dir); err != nil || !st.IsDir() {
			return fmt.Errorf("-resources %q is not a directory", *dir)
		}
	}
	var policy kbs.PolicyFunc
	if *deny != "" {
		re, err := regexp.Compile(*deny)
		if err != nil {
			return fmt.Errorf("-deny: %w", err)
		}
		policy = func(_ context.Context, in kbs.PolicyInput) error {
			if p := in.Plugin + "/" + strings.Join(in.Path, "/"); re.MatchString(p) {
				return fmt.Errorf("%s is denied by -deny", p)
			}
			return nil
		}
	}
	log := slog.New(slog.DiscardHandler)
	if *verbose {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	vs := kbs.DefaultVerifiers()
	if *withSNP {
		vs[attester.TeeSNP] = kbs.SNPVerifier(kbs.SNPOptions{})
	}
	if *withTDX {
		vs[attester.TeeTDX] = kbs.TDXVerifier(kbs.TDXOptions{})
	}
	s, err := kbs.Start(ctx, kbs.Options{Addr: *addr, CertNames: extra, ResourceDir: *dir, TokenLifetime: *lifetime, Verifiers: vs, Logger: log, PlainHTTP: *plain, Policy: policy})
	if err != nil {
		return err
	}
	defer s.Close()
	if *caOut != "" {
		if err := os.WriteFile(*caOut, s.CACertPEM(), 0o644); err != nil {
			return fmt.Errorf("-ca-out: %w", err)
		}
	}
	fmt.Printf("development KBS (not for production) listening on %s\n", s.URL())
	<-ctx.Done()
	st := s.Stats()
	fmt.Printf("served: %+v\n", st)
	return nil
}
