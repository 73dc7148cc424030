//! azure-sim: see sim/README.md.
