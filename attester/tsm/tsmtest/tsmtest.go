// Package tsmtest builds configfs-tsm fakes for attester tests on top of
// go-configfs-tsm's faketsm: a report subsystem whose provider attribute and
// out/aux blobs are chosen by the test.
package tsmtest

import (
	"os"
	"path"
	"strings"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"
)

// Blobs computes a report for an in-blob (and privilege level, "" when the
// caller did not write one).
type Blobs func(inblob []byte, privlevel string) (outblob, auxblob []byte, err error)

// Client is a fake configfs-tsm client.
type Client struct {
	configfsi.Client
	// Provider is returned by the provider attribute (the kernel appends a
	// newline; so should tests that want a match).
	Provider string
	// Generation, when non-empty, replaces every generation read (to
	// simulate a racing writer).
	Generation string
}

// New returns a fake whose report entries name provider and answer with blobs.
func New(provider string, blobs Blobs) *Client {
	sub := faketsm.ReportV7(0)
	sub.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		var in, priv []byte
		if a, ok := e.InAttrs["inblob"]; ok {
			in = a.Value
		}
		if a, ok := e.InAttrs["privlevel"]; ok {
			priv = a.Value
		}
		switch attr {
		case "outblob", "auxblob":
			out, aux, err := blobs(in, strings.TrimSpace(string(priv)))
			if err != nil {
				return nil, err
			}
			if attr == "outblob" {
				return out, nil
			}
			return aux, nil
		}
		return nil, os.ErrNotExist
	}
	return &Client{
		Client:   &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": sub}},
		Provider: provider,
	}
}

// ReadFile serves provider and generation overrides, then delegates.
func (c *Client) ReadFile(name string) ([]byte, error) {
	switch path.Base(name) {
	case "provider":
		return []byte(c.Provider), nil
	case "generation":
		if c.Generation != "" {
			return []byte(c.Generation), nil
		}
	}
	return c.Client.ReadFile(name)
}
