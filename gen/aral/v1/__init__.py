"""Generated protobuf package. Do not edit: run `make gen`."""
