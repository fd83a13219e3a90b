// Package proto holds Tessera's own protobuf definitions and their generated code.
//
// Regenerate with Debian's protobuf-compiler and protoc-gen-go on PATH:
//
//	go generate ./proto/
package proto

//go:generate protoc --go_out=. --go_opt=paths=source_relative tesserapb/tessera.proto
