module github.com/adpo-dev/adpo/bindings/go

go 1.21
