//go:build adpo_system

package adpo

// An installed adpo (scripts/install, `make install`), found through pkg-config: its adpo.pc
// gives -I${includedir} and -L${libdir} -Wl,-rpath,${libdir} -ladpo. Set PKG_CONFIG_PATH to
// PREFIX/lib/pkgconfig for a prefix outside pkg-config's default search path.

// #cgo pkg-config: adpo
import "C"
