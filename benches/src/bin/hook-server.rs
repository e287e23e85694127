//! Baseline (d): the PostAuth check out of process, one length-prefixed frame per call over a
//! Unix socket, the way go-plugin hosts (Tyk) call theirs. Usage: `hook-server SOCKET`.

use std::os::unix::net::UnixListener;

use gateway_benches::{FrameRequest, read_frame, write_frame};

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).expect("usage: hook-server SOCKET");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    println!("ready");
    for stream in listener.incoming() {
        let mut stream = stream?;
        let mut buf = Vec::new();
        while read_frame(&mut stream, &mut buf)? {
            let decision = match FrameRequest::decode(&buf) {
                Some(req) => {
                    // The same check as the plugin: look up a header, bound the body; continue (0)
                    // or respond (1).
                    let has_auth = req.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("authorization"));
                    std::hint::black_box((has_auth, &req.method, &req.path));
                    u8::from(req.body.len() > 1 << 20)
                }
                None => 2,
            };
            write_frame(&mut stream, &[decision])?;
        }
    }
    Ok(())
}
