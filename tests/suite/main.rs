//! The whole test suite in one binary, so the burn stack is monomorphised once (DESIGN.md §6).

mod bad_input;
mod chat;
mod cli;
mod common;
mod decode;
mod dtypes;
mod end_to_end;
mod fuzz_corpora;
mod memory;
mod parity;
mod prefill;
mod quant;
mod scan;
mod server;
mod serving;
mod state_file;
mod tokenizer;
