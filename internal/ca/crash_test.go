package ca_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshtrust/meshtrust/internal/ca"
	"github.com/meshtrust/meshtrust/internal/store"
	"github.com/meshtrust/meshtrust/internal/store/sqlstore"
	"github.com/meshtrust/meshtrust/internal/store/storetest"
	"github.com/meshtrust/meshtrust/pemfile"
	"github.com/meshtrust/meshtrust/trust"
)

// crashChildEnv, when set, makes TestCrashChild the issuing process that
// TestCrash kills: its value is the CA directory.
const crashChildEnv = "MESHTRUST_CRASH_CHILD"

// crashRoundEnv numbers the child's round, so each round issues to names
// of its own.
const crashRoundEnv = "MESHTRUST_CRASH_ROUND"

// crashSeedEnv replays TestCrash's kill delays from the seed it logged.
const crashSeedEnv = "MESHTRUST_CRASH_SEED"

// TestCrash kills a process that is issuing certificates from many
// goroutines at once, at a random point, and then checks the store: it
// opens cleanly and passes SQLite's integrity check, every certificate the
// process was handed is recorded as it was handed out, no serial repeats,
// and the audit chain is unbroken with one entry per certificate. Later
// rounds reopen a store that an earlier round killed mid-write, and at the
// end the CA opens and issues again.
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes; skipped in -short mode")
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(crashSeedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", crashSeedEnv, s, err)
		}
	}
	t.Logf("seed %d (rerun with %s=%d)", seed, crashSeedEnv, seed)
	rng := mrand.New(mrand.NewPCG(seed, 0))

	cfg := setupSQLiteCA(t, t.TempDir())
	handed := make(map[string]string) // serial -> fingerprint, over all rounds
	const rounds = 5
	for round := range rounds {
		// After at least a few certificates, so the kill lands while
		// writes are in flight rather than during start-up.
		delay := 50*time.Millisecond + time.Duration(rng.Int64N(int64(750*time.Millisecond)))
		got := runCrashChild(t, cfg.Dir, round, 3, delay)
		for serial, fp := range got {
			if _, dup := handed[serial]; dup {
				t.Errorf("round %d: serial %s was handed out twice", round, serial)
			}
			handed[serial] = fp
		}
		checkCrashedStore(t, cfg, handed)
		t.Logf("round %d: killed after %v with %d certificates handed out; %d over all rounds", round, delay, len(got), len(handed))
		if t.Failed() {
			t.FailNow() // later rounds would only repeat the same findings
		}
	}

	st, err := sqlstore.OpenSQLite(t.Context(), cfg.StorePath())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c, err := ca.Open(t.Context(), cfg, st)
	if err != nil {
		t.Fatalf("the CA does not open after the crashes: %v", err)
	}
	is, err := crashSign(t.Context(), c, ca.ProfileAgent, "after@crash")
	if err != nil {
		t.Fatalf("the CA does not issue after the crashes: %v", err)
	}
	if _, err := st.Cert(t.Context(), is.Record.Serial); err != nil {
		t.Errorf("the certificate issued after the crashes is not recorded: %v", err)
	}
}

// runCrashChild starts TestCrashChild on the CA in dir, waits for it to
// hand out at least atLeast certificates, kills it with SIGKILL delay
// later, and returns the serial and fingerprint of every certificate it
// reported.
func runCrashChild(t *testing.T, dir string, round, atLeast int, delay time.Duration) map[string]string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, crashRoundEnv+"="+strconv.Itoa(round))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		r := bufio.NewReader(stdout)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return // a line cut short by the kill was never a handed-out certificate
			}
			lines <- strings.TrimSuffix(line, "\n")
		}
	}()

	got := make(map[string]string)
	record := func(line string) {
		serial, fp, ok := strings.Cut(strings.TrimPrefix(line, "issued "), " ")
		if !ok || !strings.HasPrefix(line, "issued ") {
			return // the testing package's own output
		}
		if _, dup := got[serial]; dup {
			t.Errorf("round %d: serial %s was handed out twice", round, serial)
		}
		got[serial] = fp
	}
	deadline := time.After(time.Minute)
	exited, slow := false, false
	for !exited && !slow && len(got) < atLeast {
		select {
		case line, ok := <-lines:
			if ok {
				record(line)
			} else {
				exited = true
			}
		case <-deadline:
			slow = true
		}
	}
	if !exited {
		if slow {
			delay = 0
		}
		kill := time.AfterFunc(delay, func() { cmd.Process.Signal(syscall.SIGKILL) })
		defer kill.Stop()
	}
	for line := range lines {
		record(line)
	}
	err = cmd.Wait()
	if slow {
		t.Fatalf("round %d: the child handed out %d certificates in a minute, want at least %d; its output:\n%s", round, len(got), atLeast, stderr.Bytes())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("round %d: the child ended with %v before it was killed; its output:\n%s", round, err, stderr.Bytes())
	}
	return got
}

// checkCrashedStore opens the store a killed child left behind and checks
// it against handed, every certificate handed out so far.
func checkCrashedStore(t *testing.T, cfg ca.Config, handed map[string]string) {
	t.Helper()
	ctx := t.Context()
	st, err := sqlstore.OpenSQLite(ctx, cfg.StorePath())
	if err != nil {
		t.Fatalf("the store does not open after the crash: %v", err)
	}
	defer st.Close()
	if p := storetest.SQLiteProblems(t, cfg.StorePath()); len(p) != 0 {
		t.Fatalf("the store is damaged after the crash: %q", p)
	}
	for serial, fp := range handed {
		c, err := st.Cert(ctx, serial)
		if err != nil {
			t.Errorf("certificate %s was handed out but is not in the store: %v", serial, err)
			continue
		}
		if c.Fingerprint != fp {
			t.Errorf("certificate %s was handed out with fingerprint %s, but the store has %s", serial, fp, c.Fingerprint)
		}
	}
	certs, err := st.Certs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[string]bool, len(certs))
	for _, c := range certs {
		if seen[c.Serial] {
			t.Errorf("serial %s is recorded twice", c.Serial)
		}
		seen[c.Serial] = true
		parsed, err := pemfile.ParseCerts(c.PEM)
		if err != nil || trust.Fingerprint(parsed[0]) != c.Fingerprint || parsed[0].SerialNumber.Text(16) != c.Serial {
			t.Errorf("the record of %s does not hold its own certificate (parse error: %v)", c.Serial, err)
		}
	}
	log, err := st.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.VerifyAuditChain(log); err != nil {
		t.Error(err)
	}
	// A certificate and its audit entry are written in one transaction,
	// so a crash can lose both or neither.
	issued := 0
	for _, e := range log {
		if e.Action == "cert.issue" && e.Outcome == store.OutcomeOK {
			issued++
		}
	}
	if issued != len(certs) {
		t.Errorf("the audit log records %d issued certificates, the store holds %d", issued, len(certs))
	}
}

// TestCrashChild is the process TestCrash kills; on its own it does
// nothing. It issues certificates from 16 goroutines until it is killed,
// writing "issued <serial> <fingerprint>" to stdout only once
// Sign has returned the certificate, so that every line is a promise
// the store must keep.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("the process TestCrash starts and kills")
	}
	round := os.Getenv(crashRoundEnv)
	ctx := context.Background()
	cfg := ca.Config{Dir: dir}
	st, err := sqlstore.OpenSQLite(ctx, cfg.StorePath())
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.Open(ctx, cfg, st)
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	report := func(is *ca.Issued) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, "issued %s %s\n", is.Record.Serial, is.Record.Fingerprint)
		if err := out.Flush(); err != nil {
			fmt.Fprintf(os.Stderr, "report: %v\n", err)
			os.Exit(2)
		}
	}
	// Every certificate is for a name not issued to before, so Sign
	// generates a new key each time rather than reusing one.
	node := "crash" + round
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				name := fmt.Sprintf("g%d-%d", g, i)
				var (
					is  *ca.Issued
					err error
				)
				switch (g + i) % 3 {
				case 0:
					is, err = c.Sign(ctx, ca.AgentRequest(name, node), ca.WithGeneratedKey())
				case 1:
					is, err = crashSign(ctx, c, ca.ProfileAgent, name+"@"+node)
				case 2:
					is, err = crashSign(ctx, c, ca.ProfileNode, name+".mesh", name+".mesh")
				}
				if err != nil {
					// Fail at once and loudly: a killed test never
					// prints what t.Error collected.
					fmt.Fprintf(os.Stderr, "issue %s: %v\n", name, err)
					os.Exit(2)
				}
				report(is)
			}
		})
	}
	wg.Wait() // never returns: the goroutines issue until the process dies
}

// crashSign signs a CSR for cn, under a new key, asking for dnsNames.
func crashSign(ctx context.Context, c *ca.CA, p ca.Profile, cn string, dnsNames ...string) (*ca.Issued, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: cn},
		DNSNames: dnsNames,
	}, key)
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, err
	}
	return c.Sign(ctx, ca.Request{Profile: p}, ca.FromCSR(csr))
}
