//! Placeholder: filled in by the kernel-compiler work.
