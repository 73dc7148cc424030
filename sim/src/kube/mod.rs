//! kube-sim: see sim/README.md.
