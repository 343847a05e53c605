//! Writes a file at a known rate, like a logger: `rate-writer PATH TOTAL_BYTES CHUNK_BYTES
//! INTERVAL_MS`. Holds the file open until done; never fsyncs (the test decides when).

use std::{env, fs::OpenOptions, io::Write, process::ExitCode, thread, time::Duration};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().collect();
    let [_, path, total, chunk, interval] = args.as_slice() else {
        eprintln!("usage: rate-writer PATH TOTAL_BYTES CHUNK_BYTES INTERVAL_MS");
        return ExitCode::from(2);
    };
    let (Ok(total), Ok(chunk), Ok(interval)) = (
        total.parse::<usize>(),
        chunk.parse::<usize>(),
        interval.parse::<u64>(),
    ) else {
        eprintln!("rate-writer: sizes and interval must be numbers");
        return ExitCode::from(2);
    };
    let mut file = match OpenOptions::new().create(true).append(true).open(path) {
        Ok(file) => file,
        Err(err) => {
            eprintln!("rate-writer: {path}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let buffer = vec![b'x'; chunk];
    let mut written = 0;
    while written < total {
        let n = chunk.min(total - written);
        if let Err(err) = file.write_all(&buffer[..n]) {
            eprintln!("rate-writer: {err}");
            return ExitCode::FAILURE;
        }
        written += n;
        thread::sleep(Duration::from_millis(interval));
    }
    ExitCode::SUCCESS
}
