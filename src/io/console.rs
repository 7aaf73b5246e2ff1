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
    ($($arg:tt)*) => { $crate::io::console::write_stderr_line(&format!($($arg)*)) };
}

/// Parses the command line into `T`. On `--help`/`--version` prints them and returns
/// Err(0); on a bad flag prints one line (`PROGRAM: error: ... (see PROGRAM --help)`) and
/// returns Err(2). Under mpirun every rank would print the same thing, so only the launch's
/// first rank prints.
pub fn parse_args<T: clap::Parser>(program: &str) -> Result<T, i32> {
    match T::try_parse() {
        Ok(args) => Ok(args),
        Err(e) => {
            let first = crate::dist::comm::launch_rank() == 0;
            if !e.use_stderr() {
                if first {
                    let _ = e.print();
                }
                Err(0)
            } else {
                if first {
                    write_stderr_line(&format!("{program}: error: {} (see {program} --help)", clap_one_line(&e)));
                }
                Err(2)
            }
        }
    }
}

/// clap's message without its usage block: "unexpected argument '--foo' found".
pub fn clap_one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    first.trim_start_matches("error: ").to_string()
}

/// A progress bar of `len` `unit`s (steps, rows) drawn on stderr when it is a terminal:
/// `{message} [=====>    ] 120/500 rows, eta 3s`. The caller sets the message and position.
pub fn progress_bar(len: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    let template = format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit}, eta {{eta}}");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A message that spans lines (HDF5's, TOML's) as one line: whitespace runs become one space.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
