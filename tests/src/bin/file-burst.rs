//! Creates many small files at once, as an image layer unpacked or a `git checkout` does:
//! `file-burst DIR COUNT BYTES`. Files go into subdirectories of 10,000 each.

use std::{env, fs, io::Write, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().collect();
    let [_, dir, count, bytes] = args.as_slice() else {
        eprintln!("usage: file-burst DIR COUNT BYTES");
        return ExitCode::from(2);
    };
    let (Ok(count), Ok(bytes)) = (count.parse::<usize>(), bytes.parse::<usize>()) else {
        eprintln!("file-burst: COUNT and BYTES must be numbers");
        return ExitCode::from(2);
    };
    let content = vec![b'b'; bytes];
    for i in 0..count {
        let sub = PathBuf::from(dir).join(format!("d{}", i / 10_000));
        if i % 10_000 == 0 {
            if let Err(err) = fs::create_dir_all(&sub) {
                eprintln!("file-burst: {}: {err}", sub.display());
                return ExitCode::FAILURE;
            }
        }
        let path = sub.join(format!("f{i}"));
        let written = fs::File::create(&path).and_then(|mut f| f.write_all(&content));
        if let Err(err) = written {
            eprintln!("file-burst: {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
