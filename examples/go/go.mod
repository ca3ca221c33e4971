module github.com/adpo-dev/adpo/examples/go

go 1.21

require github.com/adpo-dev/adpo/bindings/go v0.0.0

// The binding in this repository (its cgo flags point at ../../include and target/release).
replace github.com/adpo-dev/adpo/bindings/go => ../../bindings/go
