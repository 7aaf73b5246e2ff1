//! Lines for people. Under mpirun every rank's stderr goes through one pipe, and a line
//! written in pieces (as `eprintln!` does with its format arguments) can be split by another
//! rank's output. Each line here is formatted first and written with a single write call.

use std::io::Write;

/// Writes `line` and a newline to stderr in one write.
pub fn write_stderr_line(line: &str) {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    let _ = std::io::stderr().lock().write_all(buf.as_bytes());
}

/// `eprintln!` that writes the whole line at once (see the module docs).
#[macro_export]
macro_rules! errorln {
    ($($arg:tt)*) => { $crate::console::write_stderr_line(&format!($($arg)*)) };
}
