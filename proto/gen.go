// Package proto holds Tessera's own protobuf definitions, and etcd's Election
// and Lock services as their clients call them, with the generated code.
//
// Regenerate with Debian's protobuf-compiler, protoc-gen-go and protoc-gen-go-grpc on PATH:
//
//	go generate ./proto/
package proto

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative tesserapb/tessera.proto tesserapb/meta.proto v3electionpb/v3election.proto v3lockpb/v3lock.proto
