//! Writing to the terminal without panicking when stdout is closed early
//! (`stratus validate … | head -1`): `println!` panics on a broken pipe, [`say!`](crate::say) exits quietly.

use std::io::Write;

/// Writes one line to stdout; when the reader has gone away, ends the process with status 0.
pub fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// `println!` that survives a closed stdout.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::say(format_args!($($arg)*)) };
}
