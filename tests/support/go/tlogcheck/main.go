// tlogcheck checks mixip/tlog's output with Go's reference implementations, which share no code
// with ours: golang.org/x/mod/sumdb/note (signed notes) and golang.org/x/mod/sumdb/tlog
// (RFC 6962 trees and proofs). It reads one JSON request on stdin and writes one JSON reply:
//
//   - our checkpoint note, opened with our verifier key;
//   - our inclusion and consistency proofs, each checked (CheckRecord, CheckTree) against
//     the tree hashes Go computes from the leaves itself;
//   - our receipts (C2SP tlog-proof files), parsed here: the checkpoint opened with our
//     verifier key, and the proof checked (CheckRecord) for the leaf against its root;
//   - Go's own key, a checkpoint note it signs over the same leaves, and Go's proofs for
//     every leaf and every pair of sizes, for our verifier to accept.
//
// Build it in GOPATH mode (GO111MODULE=off) with Debian's golang-golang-x-mod-dev.
package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type inclusion struct {
	Index int64    `json:"index"`
	Size  int64    `json:"size"`
	Proof [][]byte `json:"proof"`
}

type consistency struct {
	Old   int64    `json:"old"`
	New   int64    `json:"new"`
	Proof [][]byte `json:"proof"`
}

type receipt struct {
	Text string `json:"text"`
	Leaf []byte `json:"leaf"`
}

type request struct {
	Receipts    []receipt     `json:"receipts"`
	Leaves      [][]byte      `json:"leaves"`
	Vkey        string        `json:"vkey"`
	Notes       []string      `json:"notes"`
	Inclusion   []inclusion   `json:"inclusion"`
	Consistency []consistency `json:"consistency"`
	Origin      string        `json:"origin"`
}

type opened struct {
	Text  string `json:"text"`
	Error string `json:"error"`
}

type reply struct {
	Receipts    []string      `json:"receipts"`
	Roots       [][]byte      `json:"roots"`
	Notes       []opened      `json:"notes"`
	Inclusion   []string      `json:"inclusion"`
	Consistency []string      `json:"consistency"`
	Skey        string        `json:"skey"`
	Vkey        string        `json:"vkey"`
	Checkpoint  string        `json:"checkpoint"`
	Proofs      []inclusion   `json:"proofs"`
	TreeProofs  []consistency `json:"tree_proofs"`
}

func errorText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func hashes(proof [][]byte) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(proof))
	for i, h := range proof {
		if len(h) != tlog.HashSize {
			return nil, fmt.Errorf("hash %d has %d bytes", i, len(h))
		}
		copy(out[i][:], h)
	}
	return out, nil
}

func raw(proof []tlog.Hash) [][]byte {
	out := make([][]byte, len(proof))
	for i := range proof {
		out[i] = append([]byte(nil), proof[i][:]...)
	}
	return out
}

var indexLine = regexp.MustCompile(`^index (0|[1-9][0-9]*)$`)

// checkReceipt checks a C2SP tlog-proof file (https://c2sp.org/tlog-proof) proves leaf: the
// format read here from the spec, the checkpoint opened by sumdb/note, the proof by sumdb/tlog.
func checkReceipt(text string, leaf []byte, verifier note.Verifier) error {
	head, checkpoint, found := strings.Cut(text, "\n\n")
	lines := strings.Split(head, "\n")
	if !found || lines[0] != "c2sp.org/tlog-proof@v1" {
		return fmt.Errorf("not a tlog-proof")
	}
	lines = lines[1:]
	if len(lines) > 0 && strings.HasPrefix(lines[0], "extra ") {
		lines = lines[1:]
	}
	if len(lines) == 0 || !indexLine.MatchString(lines[0]) {
		return fmt.Errorf("no index line")
	}
	index, err := strconv.ParseInt(strings.TrimPrefix(lines[0], "index "), 10, 64)
	if err != nil {
		return err
	}
	var proof tlog.RecordProof
	for _, line := range lines[1:] {
		h, err := base64.StdEncoding.DecodeString(line)
		if err != nil || len(h) != tlog.HashSize {
			return fmt.Errorf("bad proof hash %q", line)
		}
		var hash tlog.Hash
		copy(hash[:], h)
		proof = append(proof, hash)
	}
	opened, err := note.Open([]byte(checkpoint), note.VerifierList(verifier))
	if err != nil {
		return err
	}
	body := strings.Split(opened.Text, "\n")
	if len(body) != 4 || body[0] != verifier.Name() || body[3] != "" {
		return fmt.Errorf("not a checkpoint of %s", verifier.Name())
	}
	size, err := strconv.ParseInt(body[1], 10, 64)
	if err != nil {
		return err
	}
	r, err := base64.StdEncoding.DecodeString(body[2])
	if err != nil || len(r) != tlog.HashSize {
		return fmt.Errorf("bad root")
	}
	var root tlog.Hash
	copy(root[:], r)
	return tlog.CheckRecord(proof, size, root, index, tlog.RecordHash(leaf))
}

func run(req request) (reply, error) {
	var stored []tlog.Hash
	reader := tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		for i, x := range indexes {
			out[i] = stored[x]
		}
		return out, nil
	})
	var rep reply
	roots := []tlog.Hash{}
	for n := int64(0); n <= int64(len(req.Leaves)); n++ {
		if n > 0 {
			more, err := tlog.StoredHashes(n-1, req.Leaves[n-1], reader)
			if err != nil {
				return rep, err
			}
			stored = append(stored, more...)
		}
		root, err := tlog.TreeHash(n, reader)
		if err != nil {
			return rep, err
		}
		roots = append(roots, root)
	}
	rep.Roots = raw(roots)

	verifier, err := note.NewVerifier(req.Vkey)
	if err != nil {
		return rep, fmt.Errorf("our vkey: %w", err)
	}
	for _, text := range req.Notes {
		n, err := note.Open([]byte(text), note.VerifierList(verifier))
		o := opened{Error: errorText(err)}
		if err == nil {
			o.Text = n.Text
		}
		rep.Notes = append(rep.Notes, o)
	}
	for _, r := range req.Receipts {
		rep.Receipts = append(rep.Receipts, errorText(checkReceipt(r.Text, r.Leaf, verifier)))
	}
	for _, p := range req.Inclusion {
		proof, err := hashes(p.Proof)
		if err == nil {
			leaf := tlog.RecordHash(req.Leaves[p.Index])
			err = tlog.CheckRecord(proof, p.Size, roots[p.Size], p.Index, leaf)
		}
		rep.Inclusion = append(rep.Inclusion, errorText(err))
	}
	for _, p := range req.Consistency {
		proof, err := hashes(p.Proof)
		if err == nil {
			err = tlog.CheckTree(proof, p.New, roots[p.New], p.Old, roots[p.Old])
		}
		rep.Consistency = append(rep.Consistency, errorText(err))
	}

	skey, vkey, err := note.GenerateKey(rand.Reader, req.Origin)
	if err != nil {
		return rep, err
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		return rep, err
	}
	size := int64(len(req.Leaves))
	text := fmt.Sprintf("%s\n%d\n%s\n", req.Origin, size, base64.StdEncoding.EncodeToString(roots[size][:]))
	signed, err := note.Sign(&note.Note{Text: text}, signer)
	if err != nil {
		return rep, err
	}
	rep.Skey, rep.Vkey, rep.Checkpoint = skey, vkey, string(signed)
	for t := int64(1); t <= size; t++ {
		for i := int64(0); i < t; i++ {
			proof, err := tlog.ProveRecord(t, i, reader)
			if err != nil {
				return rep, err
			}
			rep.Proofs = append(rep.Proofs, inclusion{Index: i, Size: t, Proof: raw(proof)})
		}
		for old := int64(1); old <= t; old++ {
			proof, err := tlog.ProveTree(t, old, reader)
			if err != nil {
				return rep, err
			}
			rep.TreeProofs = append(rep.TreeProofs, consistency{Old: old, New: t, Proof: raw(proof)})
		}
	}
	return rep, nil
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "tlogcheck: bad request:", err)
		os.Exit(2)
	}
	rep, err := run(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlogcheck:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		fmt.Fprintln(os.Stderr, "tlogcheck:", err)
		os.Exit(1)
	}
}
