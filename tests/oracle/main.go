// Command oracle is a small test oracle for boltkit: it writes bbolt files
// with the real Go library (go.etcd.io/bbolt, Debian's 1.3.6) and reads them
// back the way bbolt does, so the Python implementation can be compared
// against it.
//
// Build (GOPATH mode, no go.mod):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o /tmp/oracle ./tests/oracle
//
// Subcommands (flags go before positional arguments):
//
//	gen [-seed N] [-profile P] [-page-size N] [-scale N] [-v] OUT
//	dump FILE
//	check FILE
//	walk FILE
//	compact [-tx-max-size N] [-page-size N] SRC DST
//	mutate [-seed N] FILE
//	check-freelist FILE
//	live [-seed N] [-duration D] [-interval D] FILE
//	stats FILE
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

const usage = `usage: oracle <subcommand> [flags] args

  gen [-seed N] [-profile mixed|deep|large-values|flat|nofreelist|buildkit|deletes|leak|huge]
      [-page-size N (0 = random)] [-scale N] [-value-size N] [-v] OUT
  dump FILE
  check FILE
  walk FILE
  compact [-tx-max-size N] [-page-size N] SRC DST
  mutate [-seed N] FILE
  check-freelist FILE
  live [-seed N] [-duration 10s] [-interval 0s] [-touch N] FILE
  stats FILE
`

// childEnv marks the re-executed child of check, check-freelist and mutate.
const childEnv = "BOLTKIT_ORACLE_CHILD"

func main() {
	// Turn faults on the memory map (truncated files) into recoverable
	// panics in the main goroutine instead of fatal runtime errors.
	debug.SetPanicOnFault(true)
	// Legitimate recursion here is shallow; a page cycle in a damaged file
	// should overflow quickly rather than after 1 GB of stack.
	debug.SetMaxStack(64 << 20)

	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	args := os.Args[2:]
	var code int
	switch os.Args[1] {
	case "gen":
		code = cmdGen(args)
	case "dump":
		startWatchdog(os.Stderr)
		code = cmdDump(args)
	case "check", "check-freelist", "mutate":
		// These run tx.Check, which runs in a goroutine of bbolt's own: a
		// panic there cannot be recovered and kills the process. Run the
		// work in a child process and turn such a crash into
		// "panic: <msg>" on stdout and exit status 3.
		if os.Getenv(childEnv) == "" {
			code = supervise()
			break
		}
		startWatchdog(os.Stdout)
		switch os.Args[1] {
		case "check":
			code = cmdCheck(args)
		case "check-freelist":
			code = cmdCheckFreelist(args)
		default:
			code = cmdMutate(args)
		}
	case "walk":
		startWatchdog(os.Stderr)
		code = cmdWalk(args)
	case "stats":
		startWatchdog(os.Stderr)
		code = cmdStats(args)
	case "compact":
		code = cmdCompact(args)
	case "live":
		code = cmdLive(args)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(os.Stdout, usage)
	default:
		fmt.Fprintf(os.Stderr, "unknown subcommand %q\n%s", os.Args[1], usage)
		code = 2
	}
	os.Exit(code)
}

// supervise re-runs this command line in a child process (stdout passed
// through) and reports a Go runtime crash of the child (exit status 2, or
// death by a signal) as "panic: <msg>" on stdout with exit status 3.
func supervise() int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Printf("error: cannot find own executable: %v\n", err)
		return 4
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stdin = os.Stdin
	cmd.Stdout = os.Stdout
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if err == nil {
		os.Stderr.Write(stderr.Bytes())
		return 0
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		fmt.Printf("error: %v\n", err)
		return 4
	}
	code := ee.ExitCode()
	msg := crashMessage(stderr.Bytes())
	if code != -1 && (code != 2 || msg == "") {
		// An ordinary result, or a usage error (also status 2).
		os.Stderr.Write(stderr.Bytes())
		return code
	}
	if msg == "" {
		msg = ee.String()
	}
	fmt.Printf("panic: %s\n", msg)
	tail := stderr.Bytes()
	if len(tail) > 8192 {
		tail = tail[:8192]
	}
	os.Stderr.Write(tail)
	return 3
}

// crashMessage extracts the first "panic: ..." or "fatal error: ..." line
// (plus a following "[signal ...]" line) of a Go crash report.
func crashMessage(report []byte) string {
	lines := bytes.Split(report, []byte("\n"))
	for i, l := range lines {
		l = bytes.TrimSpace(l)
		var msg string
		switch {
		case bytes.HasPrefix(l, []byte("panic: ")):
			msg = string(l[len("panic: "):])
		case bytes.HasPrefix(l, []byte("fatal error: ")):
			msg = string(l)
		default:
			continue
		}
		if i+1 < len(lines) && bytes.HasPrefix(lines[i+1], []byte("[signal ")) {
			msg += " " + string(bytes.TrimSpace(lines[i+1]))
		}
		return msg
	}
	return ""
}

// startWatchdog ends the process with "panic: heap limit exceeded" (exit
// status 3) on out when the Go heap grows past BOLTKIT_ORACLE_MAX_HEAP_MB
// (default 1024, 0 disables): bbolt's cursor descends forever into a page
// cycle of a damaged file, growing its stack slice until the OOM killer
// strikes.
func startWatchdog(out *os.File) {
	limitMB := 1024
	if v := os.Getenv("BOLTKIT_ORACLE_MAX_HEAP_MB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			fmt.Fprintf(os.Stderr, "error: bad BOLTKIT_ORACLE_MAX_HEAP_MB %q\n", v)
			os.Exit(2)
		}
		limitMB = n
	}
	if limitMB == 0 {
		return
	}
	limit := uint64(limitMB) << 20
	go func() {
		var ms runtime.MemStats
		for range time.Tick(50 * time.Millisecond) {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > limit {
				fmt.Fprintf(out, "panic: heap limit exceeded (%d MiB > %d MiB): runaway traversal of a damaged file?\n",
					ms.HeapAlloc>>20, limitMB)
				os.Exit(3)
			}
		}
	}()
}

// newFlags returns a FlagSet that exits with status 2 on a usage error.
func newFlags(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: oracle %s %s\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// positional checks the number of positional arguments; on mismatch it
// prints the usage and exits 2.
func positional(fs *flag.FlagSet, n int) []string {
	if fs.NArg() != n {
		fs.Usage()
		os.Exit(2)
	}
	return fs.Args()
}

// openReadOnly opens an existing file read-only. bolt.Open always passes
// O_CREATE, so a missing path would otherwise be created as an empty file.
func openReadOnly(path string) (*bolt.DB, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	return bolt.Open(path, 0o444, &bolt.Options{ReadOnly: true, Timeout: time.Second})
}

func panicMessage(r interface{}) string {
	return fmt.Sprint(r)
}

// recoverTo, deferred by a command, turns a bbolt panic into a "panic:" line on out and exit status 3.
func recoverTo(out io.Writer, code *int) {
	if r := recover(); r != nil {
		fmt.Fprintf(out, "panic: %s\n", panicMessage(r))
		*code = 3
	}
}

// ---------------------------------------------------------------------------
// hex / JSON helpers

// appendHex appends the lowercase hex encoding of src to dst.
func appendHex(dst, src []byte) []byte {
	n := len(dst)
	need := n + 2*len(src)
	if cap(dst) < need {
		nd := make([]byte, n, need+need/2+64)
		copy(nd, dst)
		dst = nd
	}
	dst = dst[:need]
	hex.Encode(dst[n:], src)
	return dst
}

// childPath returns the JSON array of a child bucket's path given the JSON
// array of its parent's path ("[]" for the root).
func childPath(parent []byte, name []byte) []byte {
	out := make([]byte, 0, len(parent)+2*len(name)+4)
	if len(parent) <= 2 {
		out = append(out, '[')
	} else {
		out = append(out, parent[:len(parent)-1]...)
		out = append(out, ',')
	}
	out = append(out, '"')
	out = appendHex(out, name)
	out = append(out, '"', ']')
	return out
}

// ---------------------------------------------------------------------------
// dump

type dumper struct {
	w   *bufio.Writer
	buf []byte
}

func (d *dumper) bucketRecord(path []byte, seq uint64) {
	b := d.buf[:0]
	b = append(b, `{"type":"bucket","path":`...)
	b = append(b, path...)
	b = append(b, `,"sequence":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, '}', '\n')
	d.buf = b
	d.w.Write(b)
}

func (d *dumper) pairRecord(path, k, v []byte) {
	b := d.buf[:0]
	b = append(b, `{"type":"pair","path":`...)
	b = append(b, path...)
	b = append(b, `,"key":"`...)
	b = appendHex(b, k)
	b = append(b, `","value":"`...)
	b = appendHex(b, v)
	b = append(b, '"', '}', '\n')
	d.buf = b
	d.w.Write(b)
}

// contents emits the records of everything inside bucket b, whose own path
// (a JSON array) is path, in cursor order.
func (d *dumper) contents(b *bolt.Bucket, path []byte) {
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v != nil {
			d.pairRecord(path, k, v)
			continue
		}
		sub := b.Bucket(k)
		if sub == nil {
			d.pairRecord(path, k, nil)
			continue
		}
		cp := childPath(path, k)
		d.bucketRecord(cp, sub.Sequence())
		d.contents(sub, cp)
	}
}

func cmdDump(args []string) (code int) {
	fs := newFlags("dump", "FILE")
	fs.Parse(args)
	path := positional(fs, 1)[0]

	w := bufio.NewWriterSize(os.Stdout, 1<<20)
	defer func() {
		if r := recover(); r != nil {
			w.Flush()
			fmt.Fprintf(os.Stderr, "panic: %s\n", panicMessage(r))
			code = 3
		}
	}()

	db, err := openReadOnly(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	defer db.Close()

	d := &dumper{w: w, buf: make([]byte, 0, 4096)}
	err = db.View(func(tx *bolt.Tx) error {
		c := tx.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v != nil {
				// A plain value at the root is not valid bbolt; tx.ForEach
				// would hand it over with a nil bucket. Skip it.
				continue
			}
			b := tx.Bucket(k)
			if b == nil {
				continue
			}
			p := childPath([]byte("[]"), k)
			d.bucketRecord(p, b.Sequence())
			d.contents(b, p)
		}
		return nil
	})
	if ferr := w.Flush(); ferr != nil && err == nil {
		err = ferr
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	return 0
}

// ---------------------------------------------------------------------------
// check

func cmdCheck(args []string) (code int) {
	fs := newFlags("check", "FILE")
	fs.Parse(args)
	path := positional(fs, 1)[0]

	// Unbuffered, so that the lines printed before a crash survive it.
	w := os.Stdout
	defer recoverTo(w, &code)

	db, err := openReadOnly(path)
	if err != nil {
		fmt.Fprintf(w, "error: %v\n", err)
		return 4
	}
	defer db.Close()

	n := 0
	err = db.View(func(tx *bolt.Tx) error {
		// tx.Check runs bbolt's checker in its own goroutine and sends the
		// errors over an unbuffered channel that it closes when done. A panic
		// inside that goroutine cannot be recovered here; it crashes the
		// process with exit status 2.
		for cerr := range tx.Check() {
			fmt.Fprintln(w, cerr.Error())
			n++
		}
		return nil
	})
	if err != nil {
		fmt.Fprintf(w, "error: %v\n", err)
		return 4
	}
	if n > 0 {
		fmt.Fprintf(w, "%d errors found\n", n)
		return 1
	}
	fmt.Fprintln(w, "OK")
	return 0
}

// ---------------------------------------------------------------------------
// walk

type walker struct {
	buckets, pairs, bytes uint64
	acc                   byte
}

func (wk *walker) bucket(b *bolt.Bucket) {
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil {
			if sub := b.Bucket(k); sub != nil {
				wk.buckets++
				wk.bucket(sub)
				continue
			}
		}
		wk.pairs++
		wk.bytes += uint64(len(k) + len(v))
		if len(v) > 0 {
			wk.acc ^= v[0]
		}
	}
}

func cmdWalk(args []string) (code int) {
	fs := newFlags("walk", "FILE")
	fs.Parse(args)
	path := positional(fs, 1)[0]
	defer recoverTo(os.Stderr, &code)

	start := time.Now()
	db, err := openReadOnly(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	defer db.Close()
	wk := &walker{}
	err = db.View(func(tx *bolt.Tx) error {
		c := tx.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v != nil {
				continue
			}
			if b := tx.Bucket(k); b != nil {
				wk.buckets++
				wk.bucket(b)
			}
		}
		return nil
	})
	secs := time.Since(start).Seconds()
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	fmt.Printf("{\"buckets\":%d,\"pairs\":%d,\"bytes\":%d,\"seconds\":%s,\"acc\":%d}\n",
		wk.buckets, wk.pairs, wk.bytes, strconv.FormatFloat(secs, 'f', 6, 64), wk.acc)
	return 0
}

// ---------------------------------------------------------------------------
// stats

// cmdStats prints bbolt's own BucketStats as JSON lines: one per top-level
// bucket ({"bucket":"<hex name>",...}), then the total over all of them
// ({"bucket":null,...}), summed with BucketStats.Add exactly as `bbolt stats`
// does without a prefix.
func cmdStats(args []string) (code int) {
	fs := newFlags("stats", "FILE")
	fs.Parse(args)
	path := positional(fs, 1)[0]
	defer recoverTo(os.Stderr, &code)

	db, err := openReadOnly(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	defer db.Close()
	line := func(name *string, s bolt.BucketStats) {
		n := "null"
		if name != nil {
			n = strconv.Quote(*name)
		}
		fmt.Printf("{\"bucket\":%s,\"branch_pages\":%d,\"branch_overflow\":%d,\"leaf_pages\":%d,"+
			"\"leaf_overflow\":%d,\"keys\":%d,\"depth\":%d,\"branch_alloc\":%d,\"branch_inuse\":%d,"+
			"\"leaf_alloc\":%d,\"leaf_inuse\":%d,\"buckets\":%d,\"inline_buckets\":%d,\"inline_inuse\":%d}\n",
			n, s.BranchPageN, s.BranchOverflowN, s.LeafPageN, s.LeafOverflowN, s.KeyN, s.Depth, s.BranchAlloc,
			s.BranchInuse, s.LeafAlloc, s.LeafInuse, s.BucketN, s.InlineBucketN, s.InlineBucketInuse)
	}
	err = db.View(func(tx *bolt.Tx) error {
		var total bolt.BucketStats
		err := tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			s := b.Stats()
			total.Add(s)
			h := hex.EncodeToString(name)
			line(&h, s)
			return nil
		})
		line(nil, total)
		return err
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	return 0
}

// ---------------------------------------------------------------------------
// compact

func cmdCompact(args []string) (code int) {
	fs := newFlags("compact", "[-tx-max-size N] [-page-size N] SRC DST")
	txMax := fs.Int64("tx-max-size", 65536, "commit the destination transaction once this many key+value bytes were written (0 = one transaction)")
	pageSize := fs.Int("page-size", 0, "page size of DST (0 = bbolt default, the OS page size, as `bbolt compact` does)")
	fs.Parse(args)
	pos := positional(fs, 2)
	srcPath, dstPath := pos[0], pos[1]
	defer recoverTo(os.Stderr, &code)

	start := time.Now()
	src, err := openReadOnly(srcPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	defer src.Close()

	if err := createExclusive(dstPath); err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	dst, err := bolt.Open(dstPath, 0o644, &bolt.Options{PageSize: *pageSize, NoSync: true, Timeout: time.Second})
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	// bolt.Compact (compact.go, new in 1.3.6) is what `bbolt compact` calls:
	// it walks SRC and commits DST whenever the next key+value would push the
	// bytes of the current transaction over txMax; FillPercent = 1.0.
	if err := bolt.Compact(dst, src, *txMax); err != nil {
		dst.Close()
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	if err := dst.Sync(); err != nil {
		dst.Close()
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	if err := dst.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	secs := time.Since(start).Seconds()
	si, err1 := os.Stat(srcPath)
	di, err2 := os.Stat(dstPath)
	if err1 != nil || err2 != nil {
		fmt.Fprintf(os.Stderr, "error: stat: %v %v\n", err1, err2)
		return 1
	}
	fmt.Fprintf(os.Stderr, "%d -> %d\n", si.Size(), di.Size())
	fmt.Fprintf(os.Stderr, "{\"seconds\":%s}\n", strconv.FormatFloat(secs, 'f', 6, 64))
	return 0
}

// createExclusive creates an empty file, failing if path already exists.
// bolt.Open initialises a zero-length file as a new database.
func createExclusive(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s already exists", path)
		}
		return err
	}
	return f.Close()
}

// ---------------------------------------------------------------------------
// check-freelist

func cmdCheckFreelist(args []string) (code int) {
	fs := newFlags("check-freelist", "FILE")
	fs.Parse(args)
	path := positional(fs, 1)[0]
	defer recoverTo(os.Stdout, &code)
	// Read-only on purpose: a read-write open of a file without a synced
	// freelist (NoFreelistSync) makes bbolt 1.3.6 write one immediately.
	db, err := openReadOnly(path)
	if err != nil {
		fmt.Printf("error: %v\n", err)
		return 4
	}
	defer db.Close()
	var txid int
	var size int64
	nerr := 0
	err = db.View(func(tx *bolt.Tx) error {
		txid = tx.ID()
		size = tx.Size()
		// A read-only DB loads its freelist lazily; tx.Check forces it (and
		// rebuilds it by scanning when the meta says 0xffffffffffffffff).
		for range tx.Check() {
			nerr++
		}
		return nil
	})
	if err != nil {
		fmt.Printf("error: %v\n", err)
		return 4
	}
	st := db.Stats()
	fmt.Printf("{\"pageSize\":%d,\"txid\":%d,\"size\":%d,\"freePageN\":%d,\"checkErrors\":%d}\n",
		db.Info().PageSize, txid, size, st.FreePageN, nerr)
	return 0
}

// ---------------------------------------------------------------------------
// shared generator state

const (
	clsNormal = iota // grows freely, may have children
	clsTiny          // at most a few small keys, no children: stays inline
	clsEmpty         // never receives keys or children
)

type bucketInfo struct {
	path  [][]byte
	class int
	n     int  // approximate number of keys put
	keep  bool // never deleted by randomTx (the deep profile's depth-5 chain)
}

type generator struct {
	rng      *rand.Rand
	pageSize int
	buckets  []*bucketInfo
	keys     int
	txs      int
	note     string // for the -v summary
	// buildkit profile options: one id in bkRoots is a sha256: root; bkNonCanonical of the link keys are
	// written with every field spelled out ("Input":0, "Selector":""), as another tool or a hand edit would
	bkRoots        int
	bkNonCanonical float64
}

func (g *generator) bytes(n int) []byte {
	b := make([]byte, n)
	g.rng.Read(b)
	return b
}

const asciiAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/"

func (g *generator) ascii(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = asciiAlphabet[g.rng.Intn(len(asciiAlphabet))]
	}
	return b
}

// key returns a random non-empty key of 1..maxLen bytes, ASCII a third of
// the time.
func (g *generator) key(maxLen int) []byte {
	n := 1 + g.rng.Intn(maxLen)
	if g.rng.Intn(3) == 0 {
		return g.ascii(n)
	}
	return g.bytes(n)
}

// value returns a random value: mostly small, sometimes empty, rarely (1 in
// 200) 10 KiB..300 KiB when big is set.
func (g *generator) value(big bool) []byte {
	if big && g.rng.Intn(200) == 0 {
		return g.bytes(10<<10 + g.rng.Intn(290<<10))
	}
	switch r := g.rng.Intn(100); {
	case r < 10:
		return []byte{}
	case r < 70:
		return g.bytes(1 + g.rng.Intn(64))
	case r < 95:
		return g.bytes(1 + g.rng.Intn(512))
	default:
		return g.bytes(1 + g.rng.Intn(4096))
	}
}

func (g *generator) sequence() uint64 {
	switch g.rng.Intn(6) {
	case 0:
		return 0
	case 1:
		return uint64(g.rng.Intn(1000))
	case 2:
		return ^uint64(0)
	case 3:
		return 1<<63 + uint64(g.rng.Intn(1000))
	case 4:
		return uint64(g.rng.Uint32())
	default:
		return g.rng.Uint64()
	}
}

func getBucket(tx *bolt.Tx, path [][]byte) *bolt.Bucket {
	if len(path) == 0 {
		return nil
	}
	b := tx.Bucket(path[0])
	for _, p := range path[1:] {
		if b == nil {
			return nil
		}
		b = b.Bucket(p)
	}
	return b
}

func hasPrefix(path, prefix [][]byte) bool {
	if len(path) < len(prefix) {
		return false
	}
	for i := range prefix {
		if !bytes.Equal(path[i], prefix[i]) {
			return false
		}
	}
	return true
}

func appendPath(parent [][]byte, name []byte) [][]byte {
	p := make([][]byte, 0, len(parent)+1)
	p = append(p, parent...)
	return append(p, name)
}

// createBucket creates a bucket under parent (nil: top level). It returns
// nil, nil when the name is taken.
func (g *generator) createBucket(tx *bolt.Tx, parent *bucketInfo, name []byte, class int) (*bucketInfo, error) {
	var err error
	var ppath [][]byte
	if parent == nil {
		_, err = tx.CreateBucket(name)
	} else {
		pb := getBucket(tx, parent.path)
		if pb == nil {
			return nil, fmt.Errorf("bucket %x vanished", parent.path)
		}
		_, err = pb.CreateBucket(name)
		ppath = parent.path
	}
	if err == bolt.ErrBucketExists || err == bolt.ErrIncompatibleValue {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	bi := &bucketInfo{path: appendPath(ppath, name), class: class}
	g.buckets = append(g.buckets, bi)
	return bi, nil
}

// container is what *bolt.Tx and *bolt.Bucket have in common.
type container interface {
	Bucket(name []byte) *bolt.Bucket
	DeleteBucket(name []byte) error
}

// deleteTree deletes bucket name of c, deepest sub-buckets first.
//
// bbolt 1.3.6's DeleteBucket deletes sub-buckets from inside child.ForEach;
// when the child's nodes were already materialised in this transaction (it
// was written to), each deletion shifts the node's inodes under the cursor,
// every second sub-bucket is skipped, and its pages are neither freed nor
// reachable any more ("page N: unreachable unfreed"). Deleting the
// descendants one by one first avoids that. The "leak" profile triggers the
// bug on purpose.
func deleteTree(c container, name []byte) error {
	b := c.Bucket(name)
	if b != nil {
		var subs [][]byte
		cur := b.Cursor()
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			if v == nil {
				subs = append(subs, append([]byte(nil), k...))
			}
		}
		for _, sub := range subs {
			if err := deleteTree(b, sub); err != nil {
				return err
			}
		}
	}
	return c.DeleteBucket(name)
}

// deleteBucket removes bi and its descendants.
func (g *generator) deleteBucket(tx *bolt.Tx, bi *bucketInfo) error {
	var err error
	if len(bi.path) == 1 {
		err = deleteTree(tx, bi.path[0])
	} else {
		pb := getBucket(tx, bi.path[:len(bi.path)-1])
		if pb == nil {
			return fmt.Errorf("parent of %x vanished", bi.path)
		}
		err = deleteTree(pb, bi.path[len(bi.path)-1])
	}
	if err != nil {
		return err
	}
	kept := g.buckets[:0]
	for _, o := range g.buckets {
		if !hasPrefix(o.path, bi.path) {
			kept = append(kept, o)
		}
	}
	for i := len(kept); i < len(g.buckets); i++ {
		g.buckets[i] = nil
	}
	g.buckets = kept
	return nil
}

// pick returns a random bucket accepted by ok, or nil after a few tries.
func (g *generator) pick(ok func(*bucketInfo) bool) *bucketInfo {
	if len(g.buckets) == 0 {
		return nil
	}
	for i := 0; i < 20; i++ {
		bi := g.buckets[g.rng.Intn(len(g.buckets))]
		if ok == nil || ok(bi) {
			return bi
		}
	}
	return nil
}

func (g *generator) topLevelCount() int {
	n := 0
	for _, bi := range g.buckets {
		if len(bi.path) == 1 {
			n++
		}
	}
	return n
}

func (g *generator) randomClass() int {
	switch r := g.rng.Intn(100); {
	case r < 35:
		return clsTiny
	case r < 50:
		return clsEmpty
	default:
		return clsNormal
	}
}

// put stores one random pair in bi, respecting its class.
func (g *generator) put(tx *bolt.Tx, bi *bucketInfo, big bool) error {
	b := getBucket(tx, bi.path)
	if b == nil {
		return fmt.Errorf("bucket %x vanished", bi.path)
	}
	var k, v []byte
	if bi.class == clsTiny {
		k = g.key(12)
		v = g.bytes(g.rng.Intn(17))
	} else {
		k = g.key(64)
		v = g.value(big)
	}
	err := b.Put(k, v)
	if err == bolt.ErrIncompatibleValue { // the key names a sub-bucket
		return nil
	}
	if err != nil {
		return err
	}
	bi.n++
	g.keys++
	return nil
}

// deleteRandomKey deletes the first plain key at or after a random key.
func (g *generator) deleteRandomKey(tx *bolt.Tx, bi *bucketInfo) error {
	b := getBucket(tx, bi.path)
	if b == nil {
		return fmt.Errorf("bucket %x vanished", bi.path)
	}
	c := b.Cursor()
	k, v := c.Seek(g.key(64))
	if k == nil {
		k, v = c.First()
	}
	for i := 0; k != nil && v == nil && i < 4; i++ {
		k, v = c.Next()
	}
	if k == nil || v == nil {
		return nil
	}
	kc := append([]byte(nil), k...)
	if err := b.Delete(kc); err != nil {
		return err
	}
	if bi.n > 0 {
		bi.n--
	}
	return nil
}

// opWeights drives randomTx.
type opWeights struct {
	put, burst, create, seq, delKey, delBucket int
	preferDeep                                 bool
}

func (g *generator) randomTx(tx *bolt.Tx, nops int, w opWeights, allowBucketDelete bool) error {
	total := w.put + w.burst + w.create + w.seq + w.delKey + w.delBucket
	canPut := func(bi *bucketInfo) bool {
		return bi.class == clsNormal || (bi.class == clsTiny && bi.n < 3)
	}
	for i := 0; i < nops; i++ {
		r := g.rng.Intn(total)
		switch {
		case r < w.put:
			if bi := g.pick(canPut); bi != nil {
				if err := g.put(tx, bi, true); err != nil {
					return err
				}
			}
		case r < w.put+w.burst:
			bi := g.pick(func(bi *bucketInfo) bool { return bi.class == clsNormal })
			if bi == nil {
				continue
			}
			n := 10 + g.rng.Intn(60)
			for j := 0; j < n; j++ {
				if err := g.put(tx, bi, true); err != nil {
					return err
				}
			}
		case r < w.put+w.burst+w.create:
			var parent *bucketInfo
			if len(g.buckets) > 0 && g.rng.Intn(4) != 0 {
				parent = g.pick(func(bi *bucketInfo) bool {
					if bi.class != clsNormal || len(bi.path) >= 5 {
						return false
					}
					return !w.preferDeep || len(bi.path) >= 2 || g.rng.Intn(3) == 0
				})
			}
			var name []byte
			if g.rng.Intn(2) == 0 {
				name = []byte(fmt.Sprintf("b%d-%s", len(g.buckets), g.ascii(1+g.rng.Intn(6))))
			} else {
				name = g.key(32)
			}
			if _, err := g.createBucket(tx, parent, name, g.randomClass()); err != nil {
				return err
			}
		case r < w.put+w.burst+w.create+w.seq:
			if bi := g.pick(nil); bi != nil {
				b := getBucket(tx, bi.path)
				if err := b.SetSequence(g.sequence()); err != nil {
					return err
				}
			}
		case r < w.put+w.burst+w.create+w.seq+w.delKey:
			if bi := g.pick(func(bi *bucketInfo) bool { return bi.n > 0 }); bi != nil {
				if err := g.deleteRandomKey(tx, bi); err != nil {
					return err
				}
			}
		default:
			if !allowBucketDelete {
				continue
			}
			top := g.topLevelCount()
			bi := g.pick(func(bi *bucketInfo) bool { return !bi.keep && (len(bi.path) > 1 || top > 2) })
			if bi != nil {
				if err := g.deleteBucket(tx, bi); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (g *generator) update(db *bolt.DB, fn func(tx *bolt.Tx) error) error {
	g.txs++
	return db.Update(fn)
}

// ---------------------------------------------------------------------------
// profiles

func genMixed(g *generator, db *bolt.DB) error {
	ntx := 5 + g.rng.Intn(16)
	w := opWeights{put: 55, burst: 3, create: 10, seq: 5, delKey: 15, delBucket: 2}
	for t := 0; t < ntx; t++ {
		err := g.update(db, func(tx *bolt.Tx) error {
			if t == 0 {
				n := 3 + g.rng.Intn(6)
				for i := 0; i < n; i++ {
					var name []byte
					if g.rng.Intn(2) == 0 {
						name = []byte(fmt.Sprintf("bucket-%d", i))
					} else {
						name = g.key(24)
					}
					cls := clsNormal
					if i > 0 {
						cls = g.randomClass()
					}
					if _, err := g.createBucket(tx, nil, name, cls); err != nil {
						return err
					}
				}
			}
			return g.randomTx(tx, 30+g.rng.Intn(200), w, t > 0)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func genDeep(g *generator, db *bolt.DB) error {
	err := g.update(db, func(tx *bolt.Tx) error {
		nroots := 2 + g.rng.Intn(3)
		for r := 0; r < nroots; r++ {
			root, err := g.createBucket(tx, nil, []byte(fmt.Sprintf("chain-%d", r)), clsNormal)
			if err != nil {
				return err
			}
			if err := g.chain(tx, root, 1, r == 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	ntx := 2 + g.rng.Intn(4)
	w := opWeights{put: 50, burst: 2, create: 15, seq: 10, delKey: 20, delBucket: 3, preferDeep: true}
	for t := 0; t < ntx; t++ {
		if err := g.update(db, func(tx *bolt.Tx) error {
			return g.randomTx(tx, 20+g.rng.Intn(80), w, true)
		}); err != nil {
			return err
		}
	}
	return nil
}

// chain grows a nesting chain below bi (at depth) down to depth 5, with a
// few keys per level, branching now and then, and big sibling buckets. With
// full set, the first child always continues, so the chain reaches depth 5.
func (g *generator) chain(tx *bolt.Tx, bi *bucketInfo, depth int, full bool) error {
	bi.keep = bi.keep || full
	b := getBucket(tx, bi.path)
	if g.rng.Intn(3) == 0 {
		if err := b.SetSequence(g.sequence()); err != nil {
			return err
		}
	}
	for i, n := 0, g.rng.Intn(5); i < n; i++ {
		if err := g.put(tx, bi, false); err != nil {
			return err
		}
	}
	if depth >= 5 {
		return nil
	}
	nchild := 1
	if g.rng.Intn(3) == 0 {
		nchild = 2
	}
	for c := 0; c < nchild; c++ {
		name := []byte(fmt.Sprintf("level%d-%d", depth+1, c))
		if g.rng.Intn(3) == 0 {
			name = g.key(16)
		}
		child, err := g.createBucket(tx, bi, name, clsNormal)
		if err != nil {
			return err
		}
		if child == nil {
			continue
		}
		if (full && c == 0) || g.rng.Intn(4) != 0 {
			if err := g.chain(tx, child, depth+1, full && c == 0); err != nil {
				return err
			}
		}
	}
	if g.rng.Intn(3) == 0 {
		big, err := g.createBucket(tx, bi, []byte(fmt.Sprintf("big-%d", depth)), clsNormal)
		if err != nil {
			return err
		}
		if big != nil {
			for i, n := 0, 200+g.rng.Intn(600); i < n; i++ {
				if err := g.put(tx, big, false); err != nil {
					return err
				}
			}
		}
	}
	if g.rng.Intn(4) == 0 {
		if _, err := g.createBucket(tx, bi, []byte(fmt.Sprintf("empty-%d", depth)), clsEmpty); err != nil {
			return err
		}
	}
	if g.rng.Intn(4) == 0 {
		tiny, err := g.createBucket(tx, bi, []byte(fmt.Sprintf("tiny-%d", depth)), clsTiny)
		if err != nil {
			return err
		}
		if tiny != nil {
			if err := g.put(tx, tiny, false); err != nil {
				return err
			}
		}
	}
	return nil
}

func (g *generator) largeSize() int {
	ps := g.pageSize
	switch r := g.rng.Intn(100); {
	case r < 10:
		return 0
	case r < 30:
		return 1 + g.rng.Intn(100)
	case r < 50:
		s := ps - 100 + g.rng.Intn(200)
		if s < 0 {
			s = 0
		}
		return s
	case r < 75:
		return ps + g.rng.Intn(8*ps)
	case r < 90:
		return 64<<10 + g.rng.Intn(448<<10)
	default:
		return 512<<10 + g.rng.Intn(1536<<10)
	}
}

func genLargeValues(g *generator, db *bolt.DB) error {
	type item struct {
		bi *bucketInfo
		k  []byte
	}
	var items []item
	err := g.update(db, func(tx *bolt.Tx) error {
		n := 3 + g.rng.Intn(3)
		for i := 0; i < n; i++ {
			name := []byte(fmt.Sprintf("blobs-%d", i))
			if i == n-1 {
				name = g.key(20)
			}
			if _, err := g.createBucket(tx, nil, name, clsNormal); err != nil {
				return err
			}
		}
		nested, err := g.createBucket(tx, g.buckets[0], []byte("nested"), clsNormal)
		if err != nil {
			return err
		}
		// Guaranteed sizes: > 1 MiB, empty, one byte, around a page.
		sizes := []int{1<<20 + 1 + g.rng.Intn(1<<18), 0, 1, g.pageSize - 16, g.pageSize, 2*g.pageSize + 7}
		for i, s := range sizes {
			bi := g.buckets[g.rng.Intn(len(g.buckets))]
			if i == 0 {
				bi = g.buckets[0]
			}
			if i == 1 && nested != nil {
				bi = nested
			}
			k := []byte(fmt.Sprintf("blob-%04d", i))
			if err := getBucket(tx, bi.path).Put(k, g.bytes(s)); err != nil {
				return err
			}
			items = append(items, item{bi, k})
			g.keys++
		}
		return nil
	})
	if err != nil {
		return err
	}
	ntx := 3 + g.rng.Intn(4)
	for t := 0; t < ntx; t++ {
		err := g.update(db, func(tx *bolt.Tx) error {
			for i, n := 0, 3+g.rng.Intn(8); i < n; i++ {
				bi := g.buckets[g.rng.Intn(len(g.buckets))]
				var k []byte
				if g.rng.Intn(2) == 0 {
					k = []byte(fmt.Sprintf("blob-%04d", len(items)))
				} else {
					k = g.key(40)
				}
				if err := getBucket(tx, bi.path).Put(k, g.bytes(g.largeSize())); err != nil {
					return err
				}
				items = append(items, item{bi, k})
				g.keys++
			}
			// Overwrite and delete a few existing values (never item 0, the
			// guaranteed > 1 MiB one) so overflow runs get freed.
			for i, n := 0, g.rng.Intn(3); i < n && len(items) > 1; i++ {
				j := 1 + g.rng.Intn(len(items)-1)
				it := items[j]
				b := getBucket(tx, it.bi.path)
				if g.rng.Intn(2) == 0 {
					if err := b.Put(it.k, g.bytes(g.largeSize())); err != nil {
						return err
					}
				} else {
					if err := b.Delete(it.k); err != nil {
						return err
					}
					items = append(items[:j], items[j+1:]...)
					g.keys--
				}
			}
			for i, n := 0, g.rng.Intn(20); i < n; i++ {
				if err := g.put(tx, g.buckets[g.rng.Intn(len(g.buckets))], false); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// genHuge writes bucket "big" holding "a" (small), "huge" (size random bytes)
// and "z" (small): the file a memory bound is measured on.
func genHuge(g *generator, db *bolt.DB, size int) error {
	if size < 0 {
		return fmt.Errorf("-value-size must be >= 0")
	}
	return g.update(db, func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("big"))
		if err != nil {
			return err
		}
		if err := b.Put([]byte("a"), []byte("small")); err != nil {
			return err
		}
		if err := b.Put([]byte("huge"), g.bytes(size)); err != nil {
			return err
		}
		g.keys += 3
		return b.Put([]byte("z"), []byte("after"))
	})
}

func genFlat(g *generator, db *bolt.DB, scale int) error {
	n := 2000 * scale
	sequential := g.rng.Intn(2) == 0
	if sequential {
		g.note = "keys=8-byte-counters"
	} else {
		g.note = "keys=random-16-byte"
	}
	var keys [][16]byte
	if !sequential {
		// Random 16-byte keys, inserted in sorted order so that every
		// transaction appends at the right edge of the tree (fast).
		keys = make([][16]byte, n)
		for i := range keys {
			binary.BigEndian.PutUint64(keys[i][:8], g.rng.Uint64())
			binary.BigEndian.PutUint64(keys[i][8:], g.rng.Uint64())
		}
		sort.Slice(keys, func(i, j int) bool { return bytes.Compare(keys[i][:], keys[j][:]) < 0 })
	}
	const batch = 100000
	for start := 0; start < n; start += batch {
		end := start + batch
		if end > n {
			end = n
		}
		err := g.update(db, func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("data"))
			if err != nil {
				return err
			}
			// One allocation per transaction: bbolt keeps references to the
			// value slices until commit.
			vals := make([]byte, 100*(end-start))
			g.rng.Read(vals)
			for i := start; i < end; i++ {
				var k []byte
				if sequential {
					k = make([]byte, 8)
					binary.BigEndian.PutUint64(k, uint64(i))
				} else {
					k = keys[i][:]
				}
				off := 100 * (i - start)
				if err := b.Put(k, vals[off:off+100:off+100]); err != nil {
					return err
				}
			}
			g.keys += end - start
			return b.SetSequence(uint64(end))
		})
		if err != nil {
			return err
		}
	}
	if n == 0 {
		return g.update(db, func(tx *bolt.Tx) error {
			_, err := tx.CreateBucketIfNotExists([]byte("data"))
			return err
		})
	}
	return nil
}

type bkRecord struct {
	id     string
	result string // "" when the id has no result
}

func (g *generator) sha() string {
	var b [32]byte
	g.rng.Read(b[:])
	return "sha256:" + hex.EncodeToString(b[:])
}

const base32Alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

func (g *generator) bkName(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = base32Alphabet[g.rng.Intn(len(base32Alphabet))]
	}
	return string(b)
}

// linkKey is the JSON Go's encoding/json writes for BuildKit's CacheInfoLink: fields in struct order
// (Input, Output, Digest, Selector), zero values omitted, no spaces. Link keys are matched byte for byte.
func linkKey(input, output int, dgst, sel string) string {
	var parts []string
	if input != 0 {
		parts = append(parts, fmt.Sprintf(`"Input":%d`, input))
	}
	if output != 0 {
		parts = append(parts, fmt.Sprintf(`"Output":%d`, output))
	}
	if dgst != "" {
		parts = append(parts, fmt.Sprintf(`"Digest":%q`, dgst))
	}
	if sel != "" {
		parts = append(parts, fmt.Sprintf(`"Selector":%q`, sel))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// linkKeyVerbose is a CacheInfoLink JSON with every field written out, zero values included: valid JSON that
// decodes to the same link, but not the bytes Go writes (so BuildKit's byte-for-byte lookups never match it).
func linkKeyVerbose(input, output int, dgst, sel string) string {
	return fmt.Sprintf(`{"Input":%d,"Output":%d,"Digest":%q,"Selector":%q}`, input, output, dgst, sel)
}

func genBuildkit(g *generator, db *bolt.DB, scale int) error {
	n := 100 * scale
	workers := []string{g.bkName(25), g.bkName(25)}
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var live []bkRecord
	var derived []string // derived ids generated so far: link targets
	top := [][]byte{[]byte("_result"), []byte("_links"), []byte("_byresult"), []byte("_backlinks")}
	if err := g.update(db, func(tx *bolt.Tx) error {
		for _, name := range top {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	// 500 ids per transaction; small files still get several transactions.
	perTx := 500
	if n < 2000 {
		perTx = n / 4
		if perTx < 20 {
			perTx = 20
		}
	}
	for done := 0; done < n; {
		m := perTx
		if n-done < m {
			m = n - done
		}
		err := g.update(db, func(tx *bolt.Tx) error {
			results := tx.Bucket([]byte("_result"))
			links := tx.Bucket([]byte("_links"))
			byresult := tx.Bucket([]byte("_byresult"))
			backlinks := tx.Bucket([]byte("_backlinks"))
			for i := 0; i < m; i++ {
				// a quarter root keys (sha256:), the rest derived 25-character ids, as BuildKit makes them
				id := g.bkName(25)
				if g.rng.Intn(g.bkRoots) == 0 {
					id = g.sha()
				}
				lb, err := links.CreateBucketIfNotExists([]byte(id))
				if err != nil {
					return err
				}
				// 1-4 links per id: brings -scale 2000 to about 390 MB.
				nl := 1 + g.rng.Intn(4)
				for j := 0; j < nl; j++ {
					var target string
					if len(derived) > 0 && g.rng.Intn(5) != 0 {
						target = derived[g.rng.Intn(len(derived))]
					} else {
						target = g.bkName(25)
					}
					sel := ""
					if g.rng.Intn(8) == 0 {
						sel = g.sha()
					}
					encode := linkKey
					if g.bkNonCanonical > 0 && g.rng.Float64() < g.bkNonCanonical {
						encode = linkKeyVerbose
					}
					k := encode(g.rng.Intn(3), g.rng.Intn(2), g.sha(), sel) + "@" + target
					if err := lb.Put([]byte(k), []byte{}); err != nil {
						return err
					}
					bb, err := backlinks.CreateBucketIfNotExists([]byte(target))
					if err != nil {
						return err
					}
					if err := bb.Put([]byte(id), []byte{}); err != nil {
						return err
					}
					g.keys += 2
				}
				rec := bkRecord{id: id}
				if g.rng.Intn(3) == 0 {
					res := workers[g.rng.Intn(len(workers))] + "::" + g.bkName(25)
					created := base.Add(time.Duration(g.rng.Int63n(int64(90 * 24 * time.Hour))))
					val := fmt.Sprintf(`{"CreatedAt":"%s","ID":"%s"}`, created.Format(time.RFC3339Nano), res)
					rb, err := results.CreateBucketIfNotExists([]byte(id))
					if err != nil {
						return err
					}
					if err := rb.Put([]byte(res), []byte(val)); err != nil {
						return err
					}
					bb, err := byresult.CreateBucketIfNotExists([]byte(res))
					if err != nil {
						return err
					}
					if err := bb.Put([]byte(id), []byte{}); err != nil {
						return err
					}
					g.keys += 2
					rec.result = res
				}
				live = append(live, rec)
				if !strings.HasPrefix(id, "sha256:") {
					derived = append(derived, id)
				}
			}
			// From the second batch on, release ~5% of the ids.
			if g.txs > 2 {
				nd := m / 20
				if nd < 1 {
					nd = 1
				}
				for i := 0; i < nd && len(live) > 0; i++ {
					j := g.rng.Intn(len(live))
					rec := live[j]
					live[j] = live[len(live)-1]
					live = live[:len(live)-1]
					if err := links.DeleteBucket([]byte(rec.id)); err != nil {
						return err
					}
					if err := backlinks.DeleteBucket([]byte(rec.id)); err != nil && err != bolt.ErrBucketNotFound {
						return err
					}
					if rec.result != "" {
						if err := results.DeleteBucket([]byte(rec.id)); err != nil {
							return err
						}
						if err := byresult.DeleteBucket([]byte(rec.result)); err != nil {
							return err
						}
					}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		done += m
	}
	return nil
}

func genDeletes(g *generator, db *bolt.DB) error {
	err := g.update(db, func(tx *bolt.Tx) error {
		n := 3 + g.rng.Intn(4)
		for i := 0; i < n; i++ {
			var parent *bucketInfo
			if i > 0 && g.rng.Intn(3) == 0 {
				parent = g.buckets[g.rng.Intn(len(g.buckets))]
			}
			if _, err := g.createBucket(tx, parent, []byte(fmt.Sprintf("del-%d", i)), clsNormal); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	nfill := 2 + g.rng.Intn(2)
	for t := 0; t < nfill; t++ {
		err := g.update(db, func(tx *bolt.Tx) error {
			for _, bi := range g.buckets {
				b := getBucket(tx, bi.path)
				for i, n := 0, 150+g.rng.Intn(700); i < n; i++ {
					var v []byte
					if g.rng.Intn(50) == 0 {
						v = g.bytes(2048 + g.rng.Intn(8192))
					} else {
						v = g.bytes(g.rng.Intn(300))
					}
					if err := b.Put(g.key(48), v); err != nil {
						if err == bolt.ErrIncompatibleValue {
							continue
						}
						return err
					}
					g.keys++
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	ndel := 2 + g.rng.Intn(3)
	for t := 0; t < ndel; t++ {
		err := g.update(db, func(tx *bolt.Tx) error {
			for _, bi := range g.buckets {
				b := getBucket(tx, bi.path)
				var victims [][]byte
				c := b.Cursor()
				for k, v := c.First(); k != nil; k, v = c.Next() {
					if v != nil && g.rng.Intn(100) < 60 {
						victims = append(victims, append([]byte(nil), k...))
					}
				}
				for _, k := range victims {
					if err := b.Delete(k); err != nil {
						return err
					}
					g.keys--
				}
			}
			if t == ndel-1 && g.rng.Intn(2) == 0 {
				if bi := g.pick(func(bi *bucketInfo) bool { return len(bi.path) > 1 || g.topLevelCount() > 2 }); bi != nil {
					return g.deleteBucket(tx, bi)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// genLeak is mixed plus one bucket deleted through the bbolt 1.3.6 bug
// described at deleteTree: the file is readable but `check` reports
// "unreachable unfreed" pages.
func genLeak(g *generator, db *bolt.DB) error {
	if err := genMixed(g, db); err != nil {
		return err
	}
	name := []byte("leaky")
	err := g.update(db, func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(name)
		if err != nil {
			return err
		}
		for i, n := 0, 2+g.rng.Intn(5); i < n; i++ {
			sub, err := b.CreateBucket([]byte(fmt.Sprintf("child-%d", i)))
			if err != nil {
				return err
			}
			// Enough data to be paged at any page size up to 64 KiB.
			for j, m := 0, 300+g.rng.Intn(300); j < m; j++ {
				if err := sub.Put([]byte(fmt.Sprintf("k%06d", j)), g.bytes(100+g.rng.Intn(200))); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return g.update(db, func(tx *bolt.Tx) error {
		b := tx.Bucket(name)
		if err := b.Put([]byte("touch"), []byte("x")); err != nil {
			return err
		}
		return tx.DeleteBucket(name) // plain DeleteBucket: leaks
	})
}

// ---------------------------------------------------------------------------
// gen

var pageSizes = []int{1024, 2048, 4096, 8192, 16384, 32768, 65536}

func cmdGen(args []string) (code int) {
	fs := newFlags("gen", "[-seed N] [-profile P] [-page-size N] [-scale N] [-roots N] [-non-canonical F] [-v] OUT")
	seed := fs.Int64("seed", 1, "random seed")
	profile := fs.String("profile", "mixed", "mixed|deep|large-values|flat|nofreelist|buildkit|deletes|leak|huge (leak: deliberately leaks pages, see deleteTree)")
	pageSize := fs.Int("page-size", 4096, "page size; 0 picks one of 1024..65536 from the seed")
	scale := fs.Int("scale", 1, "size multiplier for the flat (2000*scale keys) and buildkit (100*scale ids) profiles")
	roots := fs.Int("roots", 4, "buildkit profile: one id in N is a sha256: root key")
	nonCanonical := fs.Float64("non-canonical", 0, "buildkit profile: fraction of link keys written with every field spelled out (not Go's canonical JSON)")
	valueSize := fs.Int("value-size", 64<<20, "huge profile: the size of its one huge value")
	verbose := fs.Bool("v", false, "print a one-line summary on stderr")
	fs.Parse(args)
	out := positional(fs, 1)[0]
	defer recoverTo(os.Stderr, &code)

	switch *profile {
	case "mixed", "deep", "large-values", "flat", "nofreelist", "buildkit", "deletes", "leak", "huge":
	default:
		fmt.Fprintf(os.Stderr, "error: unknown profile %q\n", *profile)
		return 2
	}
	if *scale < 0 {
		fmt.Fprintln(os.Stderr, "error: -scale must be >= 0")
		return 2
	}
	if *roots < 1 || *nonCanonical < 0 || *nonCanonical > 1 {
		fmt.Fprintln(os.Stderr, "error: -roots must be >= 1 and -non-canonical in 0..1")
		return 2
	}
	g := &generator{rng: rand.New(rand.NewSource(*seed)), bkRoots: *roots, bkNonCanonical: *nonCanonical}
	ps := *pageSize
	if ps == 0 {
		ps = pageSizes[g.rng.Intn(len(pageSizes))]
	}
	if ps < 512 || ps > 65536 || ps&(ps-1) != 0 {
		fmt.Fprintf(os.Stderr, "error: page size %d: want a power of two in 512..65536\n", ps)
		return 2
	}
	g.pageSize = ps

	start := time.Now()
	if err := createExclusive(out); err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	db, err := bolt.Open(out, 0o644, &bolt.Options{
		PageSize:       ps,
		NoSync:         true,
		NoFreelistSync: *profile == "nofreelist",
		Timeout:        time.Second,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	switch *profile {
	case "mixed", "nofreelist":
		err = genMixed(g, db)
	case "deep":
		err = genDeep(g, db)
	case "large-values":
		err = genLargeValues(g, db)
	case "flat":
		err = genFlat(g, db, *scale)
	case "buildkit":
		err = genBuildkit(g, db, *scale)
	case "deletes":
		err = genDeletes(g, db)
	case "leak":
		err = genLeak(g, db)
	case "huge":
		err = genHuge(g, db, *valueSize)
	}
	if err == nil {
		err = db.Sync()
	}
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	if *verbose {
		var size int64
		if fi, err := os.Stat(out); err == nil {
			size = fi.Size()
		}
		fmt.Fprintf(os.Stderr, "gen: profile=%s seed=%d page-size=%d txs=%d keys~%d file=%d bytes seconds=%.3f %s\n",
			*profile, *seed, ps, g.txs, g.keys, size, time.Since(start).Seconds(), g.note)
	}
	return 0
}

// ---------------------------------------------------------------------------
// mutate

type sampledKey struct {
	path [][]byte
	key  []byte
}

func cmdMutate(args []string) (code int) {
	fs := newFlags("mutate", "[-seed N] FILE")
	seed := fs.Int64("seed", 1, "random seed")
	fs.Parse(args)
	path := positional(fs, 1)[0]
	w := os.Stdout
	defer recoverTo(w, &code)

	fi, err := os.Stat(path)
	if err != nil {
		fmt.Fprintf(w, "error: %v\n", err)
		return 4
	}
	if !fi.Mode().IsRegular() {
		fmt.Fprintf(w, "error: %s: not a regular file\n", path)
		return 4
	}
	db, err := bolt.Open(path, 0o644, &bolt.Options{Timeout: time.Second})
	if err != nil {
		fmt.Fprintf(w, "error: %v\n", err)
		return 4
	}
	defer db.Close()

	g := &generator{rng: rand.New(rand.NewSource(*seed)), pageSize: db.Info().PageSize}

	// Inventory: every bucket, and a reservoir sample of 20 plain keys.
	const nsample = 20
	var sample []sampledKey
	seen := 0
	var visit func(b *bolt.Bucket, p [][]byte)
	visit = func(b *bolt.Bucket, p [][]byte) {
		g.buckets = append(g.buckets, &bucketInfo{path: p, class: clsNormal})
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v == nil {
				if sub := b.Bucket(k); sub != nil {
					visit(sub, appendPath(p, append([]byte(nil), k...)))
				}
				continue
			}
			seen++
			j := seen - 1
			if len(sample) >= nsample {
				j = g.rng.Intn(seen)
			}
			if j < nsample {
				sk := sampledKey{path: p, key: append([]byte(nil), k...)}
				if len(sample) < nsample {
					sample = append(sample, sk)
				} else {
					sample[j] = sk
				}
			}
		}
	}
	if err := db.View(func(tx *bolt.Tx) error {
		c := tx.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v != nil {
				continue
			}
			if b := tx.Bucket(k); b != nil {
				visit(b, [][]byte{append([]byte(nil), k...)})
			}
		}
		return nil
	}); err != nil {
		fmt.Fprintf(w, "error: %v\n", err)
		return 4
	}

	// Transaction 1: 50 random puts (into a fresh bucket if there is none).
	err = db.Update(func(tx *bolt.Tx) error {
		if len(g.buckets) == 0 {
			if _, err := g.createBucket(tx, nil, []byte("mutate"), clsNormal); err != nil {
				return err
			}
		}
		for i := 0; i < 50; i++ {
			if err := g.put(tx, g.buckets[g.rng.Intn(len(g.buckets))], false); err != nil {
				return err
			}
		}
		return nil
	})
	// Transaction 2: delete the sampled keys.
	if err == nil {
		err = db.Update(func(tx *bolt.Tx) error {
			for _, s := range sample {
				b := getBucket(tx, s.path)
				if b == nil {
					continue
				}
				if err := b.Delete(s.key); err != nil && err != bolt.ErrIncompatibleValue {
					return err
				}
			}
			return nil
		})
	}
	// Transaction 3: drop one bucket (nested if possible), create three.
	if err == nil {
		err = db.Update(func(tx *bolt.Tx) error {
			var victim *bucketInfo
			var nested []*bucketInfo
			for _, bi := range g.buckets {
				if len(bi.path) > 1 {
					nested = append(nested, bi)
				}
			}
			if len(nested) > 0 {
				victim = nested[g.rng.Intn(len(nested))]
			} else if len(g.buckets) > 0 {
				victim = g.buckets[g.rng.Intn(len(g.buckets))]
			}
			if victim != nil {
				if err := g.deleteBucket(tx, victim); err != nil {
					return err
				}
			}
			existing := append([]*bucketInfo(nil), g.buckets...)
			var created []*bucketInfo
			for i := 0; i < 2; i++ {
				for try := 0; try < 10; try++ {
					bi, err := g.createBucket(tx, nil, []byte(fmt.Sprintf("mutate-%d-%s", i, g.ascii(8))), clsNormal)
					if err != nil {
						return err
					}
					if bi != nil {
						created = append(created, bi)
						break
					}
				}
			}
			// The nested one goes under a bucket that existed before.
			var parent *bucketInfo
			var shallow []*bucketInfo
			for _, bi := range existing {
				if len(bi.path) < 5 {
					shallow = append(shallow, bi)
				}
			}
			if len(shallow) > 0 {
				parent = shallow[g.rng.Intn(len(shallow))]
			} else if len(created) > 0 {
				parent = created[0]
			}
			for try := 0; try < 10; try++ {
				bi, err := g.createBucket(tx, parent, g.key(24), clsNormal)
				if err != nil {
					return err
				}
				if bi != nil {
					created = append(created, bi)
					break
				}
			}
			for _, bi := range created {
				for i, n := 0, 1+g.rng.Intn(10); i < n; i++ {
					if err := g.put(tx, bi, false); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	if err != nil {
		fmt.Fprintf(w, "error: %v\n", err)
		return 4
	}

	n := 0
	if err := db.View(func(tx *bolt.Tx) error {
		for cerr := range tx.Check() {
			fmt.Fprintln(w, cerr.Error())
			n++
		}
		return nil
	}); err != nil {
		fmt.Fprintf(w, "error: %v\n", err)
		return 4
	}
	if n > 0 {
		fmt.Fprintf(w, "%d errors found\n", n)
		return 1
	}
	fmt.Fprintln(w, "OK")
	return 0
}

// cmdLive holds FILE open read-write (bbolt's exclusive flock, as buildkitd
// does) and commits transactions in a loop for -duration: puts of small,
// page-sized and overflowing values, deletes, and nested buckets made and
// dropped, within a bounded key space, so pages are freed and reused all the
// time. Every transaction also writes its number to live/!first, live/~last
// and zz-counter/n. It prints "ready" once the first transaction has
// committed, and "commits N" at the end; boltkit's reads of a live file are
// tested against it.
func cmdLive(args []string) (code int) {
	fs := newFlags("live", "[-seed N] [-duration D] [-interval D] [-touch N] FILE")
	seed := fs.Int64("seed", 1, "random seed")
	touch := fs.Int("touch", 0, "also put N random pairs that were in the file at the start back with their own value, every commit: their pages are rewritten and the old ones freed and reused, the contents never change")
	duration := fs.Duration("duration", 10*time.Second, "how long to keep committing")
	interval := fs.Duration("interval", 0, "pause between transactions")
	fs.Parse(args)
	path := positional(fs, 1)[0]
	defer recoverTo(os.Stdout, &code)
	db, err := bolt.Open(path, 0o644, &bolt.Options{Timeout: time.Second})
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 4
	}
	defer db.Close()
	rng := rand.New(rand.NewSource(*seed))
	type pair struct {
		path [][]byte
		k, v []byte
	}
	var pairs []pair
	if *touch > 0 {
		var walk func(b *bolt.Bucket, path [][]byte)
		walk = func(b *bolt.Bucket, path [][]byte) {
			b.ForEach(func(k, v []byte) error {
				if v == nil {
					walk(b.Bucket(k), appendPath(path, append([]byte(nil), k...)))
				} else {
					pairs = append(pairs, pair{path, append([]byte(nil), k...), append([]byte(nil), v...)})
				}
				return nil
			})
		}
		db.View(func(tx *bolt.Tx) error {
			return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
				walk(b, [][]byte{append([]byte(nil), name...)})
				return nil
			})
		})
	}
	end := time.Now().Add(*duration)
	commits := 0
	for time.Now().Before(end) {
		err := db.Update(func(tx *bolt.Tx) error {
			for i := 0; i < *touch && len(pairs) > 0; i++ {
				p := pairs[rng.Intn(len(pairs))]
				if b := getBucket(tx, p.path); b != nil {
					if err := b.Put(p.k, p.v); err != nil {
						return err
					}
				}
			}
			top, err := tx.CreateBucketIfNotExists([]byte("live"))
			if err != nil {
				return err
			}
			// the same counter at both ends of "live" and in a bucket of its own: a
			// reader that saw one transaction sees three equal values
			n := []byte(fmt.Sprintf("%012d", commits+1))
			tail, err := tx.CreateBucketIfNotExists([]byte("zz-counter"))
			if err != nil {
				return err
			}
			for _, put := range []struct {
				b *bolt.Bucket
				k string
			}{{top, "!first"}, {top, "~last"}, {tail, "n"}} {
				if err := put.b.Put([]byte(put.k), n); err != nil {
					return err
				}
			}
			for i, n := 0, 1+rng.Intn(40); i < n; i++ {
				k := []byte(fmt.Sprintf("key-%05d", rng.Intn(3000)))
				if rng.Intn(4) == 0 {
					if err := top.Delete(k); err != nil {
						return err
					}
					continue
				}
				size := 16 + rng.Intn(300)
				if rng.Intn(20) == 0 {
					size = 3000 + rng.Intn(9000)
				}
				v := make([]byte, size)
				rng.Read(v)
				if err := top.Put(k, v); err != nil {
					return err
				}
			}
			name := []byte(fmt.Sprintf("sub-%02d", rng.Intn(20)))
			if rng.Intn(3) == 0 {
				if top.Bucket(name) != nil {
					return top.DeleteBucket(name)
				}
				return nil
			}
			sub, err := top.CreateBucketIfNotExists(name)
			if err != nil {
				return err
			}
			for i, n := 0, rng.Intn(30); i < n; i++ {
				v := make([]byte, 8+rng.Intn(200))
				rng.Read(v)
				if err := sub.Put([]byte(fmt.Sprintf("k%04d", rng.Intn(500))), v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "error: %v\n", err)
			return 4
		}
		commits++
		if commits == 1 {
			fmt.Println("ready")
		}
		if *interval > 0 {
			time.Sleep(*interval)
		}
	}
	fmt.Printf("commits %d\n", commits)
	return 0
}
