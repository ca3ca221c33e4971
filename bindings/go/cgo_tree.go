//go:build !adpo_system

package adpo

// The header and library of this repository's build tree (`make lib`), with an rpath to it.
// Build with -tags adpo_system to use an installed copy through pkg-config instead.

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -L${SRCDIR}/../../target/release -ladpo -Wl,-rpath,${SRCDIR}/../../target/release
*/
import "C"
