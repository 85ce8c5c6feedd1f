//! Kernel module dependency closure from `modules.dep` and `modules.softdep`.
//! Shared by the builder (what to put in the image) and the runtime (what to
//! load, in which order).
