"""The only part of the library that knows Flower: records, wire bytes, validation, round loop."""
