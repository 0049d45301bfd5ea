//! `anon-keylog-decrypt`: replaces each secure-mode data datagram of a
//! capture that authenticates under a key-log entry by its inner plaintext
//! datagram (same addresses and ports, lengths and checksums fixed), so
//! that wireshark/anon.lua decodes it like a fast-mode datagram.
//!
//! ```text
//! anon-keylog-decrypt --keylog FILE [--keylog FILE...] IN.pcap OUT.pcap
//! ```
//!
//! The key log holds lines `ANON_SECURE <c2s key> <c2s iv> <c2s hp> <s2c
//! key> <s2c iv> <s2c hp>` (hex), one per connection, as the client writes
//! them when `ANON_KEYLOG` names a file; other lines are skipped.
//!
//! The wire format (docs/PROTOCOL.md §8, proto/src/secure/packet.rs):
//! client to server `token (16) | masked packet number (8) | AES-256-GCM
//! (flags, inner length (2), inner datagram, [token], padding) | tag (16)`,
//! server to client the same without the token; the packet number is
//! masked with AES-128(hp key, the first 16 bytes after it), the nonce is
//! the IV XOR the packet number, and the token and packet number are the
//! associated data. Handshake datagrams (Noise IK under the outer layer) are
//! not covered by the key log: they stay as they are, as do datagrams that
//! open under no entry.
//!
//! Input: classic libpcap (either byte order, micro- or nanosecond), link
//! types Ethernet, raw IP, IPv4, IPv6, BSD loopback and Linux cooked (v1,
//! v2); pcapng is refused with the `editcap -F pcap` command that converts
//! it. A UDP datagram longer than one secure datagram that is a run of them
//! back to back (a sender's UDP GSO batch, as a capture on its own host
//! shows it) is split, one output packet per datagram.

use std::collections::HashMap;
use std::fmt;
use std::process::ExitCode;

use aes::Aes128;
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::AeadInOut;

const TOKEN_LEN: usize = 16;
const PN_LEN: usize = 8;
const TAG_LEN: usize = 16;
const BODY_PREFIX: usize = 3;
const SAMPLE_LEN: usize = 16;
/// The shortest secure data datagram (server to client, empty inner).
const MIN_SEALED: usize = PN_LEN + BODY_PREFIX + TAG_LEN;
/// Pieces of a GSO batch tried at most (the kernel's limit is 64).
const MAX_BATCH: usize = 64;

/// One direction's keys.
struct DirKeys {
    aead: Aes256Gcm,
    iv: [u8; 12],
    hp: Aes128,
}

impl fmt::Debug for DirKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DirKeys(..)")
    }
}

impl DirKeys {
    fn new(key: &[u8; 32], iv: &[u8; 12], hp: &[u8; 16]) -> DirKeys {
        DirKeys { aead: Aes256Gcm::new(&(*key).into()), iv: *iv, hp: Aes128::new(&(*hp).into()) }
    }

    /// The packet number and body of `datagram` (`header_len` bytes of
    /// token and masked packet number first), if it authenticates.
    fn open(&self, datagram: &[u8], header_len: usize) -> Option<(u64, Vec<u8>)> {
        if datagram.len() < header_len + BODY_PREFIX + TAG_LEN || header_len < PN_LEN {
            return None;
        }
        let (head, rest) = datagram.split_at(header_len);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut block = [0u8; 16];
        for (b, s) in block.iter_mut().zip(rest.get(..SAMPLE_LEN)?) {
            *b = *s;
        }
        let mut block = aes::Block::from(block);
        self.hp.encrypt_block(&mut block);
        let mask: [u8; 16] = block.into();
        let mut ad = head.to_vec();
        for (b, m) in ad.iter_mut().skip(header_len - PN_LEN).zip(mask) {
            *b ^= m;
        }
        let pn = u64::from_be_bytes(ad.get(header_len - PN_LEN..)?.try_into().ok()?);
        let mut nonce = self.iv;
        for (b, p) in nonce.iter_mut().skip(4).zip(pn.to_be_bytes()) {
            *b ^= p;
        }
        let mut body = ct.to_vec();
        let tag: [u8; TAG_LEN] = tag.try_into().ok()?;
        self.aead.decrypt_inout_detached(&nonce.into(), &ad, body.as_mut_slice().into(), &tag.into()).ok()?;
        Some((pn, body))
    }
}

/// A connection's keys, from one key-log line.
#[derive(Debug)]
struct Entry {
    c2s: DirKeys,
    s2c: DirKeys,
    line: usize,
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The entries of a key log; an `ANON_SECURE` line that does not parse is
/// an error (other lines are someone else's).
fn parse_key_log(text: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut it = line.split_whitespace();
        if it.next() != Some("ANON_SECURE") {
            continue;
        }
        let f: Vec<&str> = it.collect();
        let bad = || format!("key log line {}: expected ANON_SECURE and six hex keys", n + 1);
        let [k1, i1, h1, k2, i2, h2] = f.as_slice() else { return Err(bad()) };
        let dir = |k: &str, i: &str, h: &str| Some(DirKeys::new(&unhex(k)?, &unhex(i)?, &unhex(h)?));
        let (Some(c2s), Some(s2c)) = (dir(k1, i1, h1), dir(k2, i2, h2)) else { return Err(bad()) };
        entries.push(Entry { c2s, s2c, line: n + 1 });
    }
    Ok(entries)
}

/// Which way a datagram went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dir {
    C2s,
    S2c,
}

impl Dir {
    fn header_len(self) -> usize {
        match self {
            Dir::C2s => TOKEN_LEN + PN_LEN,
            Dir::S2c => PN_LEN,
        }
    }
}

/// The inner datagram of a body (flags, inner length, inner, ...).
fn inner_of(body: &[u8]) -> Option<&[u8]> {
    let len = usize::from(u16::from_be_bytes(body.get(1..3)?.try_into().ok()?));
    body.get(3..3 + len)
}

/// A decrypted datagram.
#[derive(Debug)]
struct Opened {
    entry: usize,
    dir: Dir,
    pn: u64,
    inner: Vec<u8>,
}

/// Tries one datagram under the entries: first the one (and direction)
/// its flow used before, then all.
fn open_one(entries: &[Entry], hint: Option<(usize, Dir)>, d: &[u8]) -> Option<Opened> {
    let try_entry = |i: usize, dir: Dir| {
        let e = entries.get(i)?;
        let keys = if dir == Dir::C2s { &e.c2s } else { &e.s2c };
        let (pn, body) = keys.open(d, dir.header_len())?;
        Some(Opened { entry: i, dir, pn, inner: inner_of(&body)?.to_vec() })
    };
    if let Some((i, dir)) = hint
        && let Some(o) = try_entry(i, dir)
    {
        return Some(o);
    }
    (0..entries.len()).find_map(|i| try_entry(i, Dir::C2s).or_else(|| try_entry(i, Dir::S2c)))
}

/// A UDP payload that is a GSO batch of secure datagrams of the flow's
/// entry: equal pieces, the last possibly shorter, each authenticating.
fn open_batch(entries: &[Entry], hint: (usize, Dir), d: &[u8]) -> Option<Vec<Opened>> {
    let min = MIN_SEALED + hint.1.header_len() - PN_LEN;
    let first_stride = min.max(d.len().div_ceil(MAX_BATCH));
    (first_stride..d.len()).find_map(|stride| {
        let mut pieces = Vec::new();
        for piece in d.chunks(stride) {
            pieces.push(open_one(entries, Some(hint), piece).filter(|o| (o.entry, o.dir) == hint)?);
        }
        Some(pieces)
    })
}

/// Byte order of a classic pcap file.
#[derive(Debug, Clone, Copy)]
struct Order {
    big: bool,
}

impl Order {
    fn u32(self, b: &[u8]) -> Option<u32> {
        let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
        Some(if self.big { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) })
    }
    fn put_u32(self, v: u32) -> [u8; 4] {
        if self.big { v.to_be_bytes() } else { v.to_le_bytes() }
    }
}

/// Where the UDP payload of a frame is, and what surrounds it.
#[derive(Debug)]
struct Udp {
    /// Offset of the IP header.
    ip: usize,
    v6: bool,
    /// Offset of the UDP header.
    udp: usize,
    /// End of the UDP datagram (before any link trailer).
    end: usize,
    flow: Flow,
}

/// Source address and port, destination address and port (IPv4 in the
/// first four bytes).
type Flow = ([u8; 16], u16, [u8; 16], u16);

/// The IP header offset of a frame of `linktype`, if it carries IP.
fn ip_offset(linktype: u32, frame: &[u8], order: Order) -> Option<usize> {
    let be16 = |at: usize| frame.get(at..at + 2).and_then(|b| b.try_into().ok()).map(u16::from_be_bytes);
    match linktype {
        // Ethernet, with up to two VLAN tags.
        1 => {
            let mut at = 12;
            let mut ty = be16(at)?;
            while ty == 0x8100 || ty == 0x88a8 {
                at += 4;
                ty = be16(at)?;
            }
            matches!(ty, 0x0800 | 0x86dd).then_some(at + 2)
        }
        // Raw IP (either version), IPv4, IPv6.
        101 | 228 | 229 | 12 | 14 => Some(0),
        // BSD loopback: a 4-byte address family in the writer's order.
        0 => {
            let fam = order.u32(frame)?;
            matches!(fam, 2 | 24 | 28 | 30 | 0x0200_0000 | 0x1800_0000 | 0x1c00_0000 | 0x1e00_0000).then_some(4)
        }
        // Linux cooked v1 and v2.
        113 => matches!(be16(14)?, 0x0800 | 0x86dd).then_some(16),
        276 => matches!(be16(0)?, 0x0800 | 0x86dd).then_some(20),
        _ => None,
    }
}

/// The UDP datagram in a frame, if it has one (and is not a fragment).
fn find_udp(linktype: u32, frame: &[u8], order: Order) -> Option<Udp> {
    let ip = ip_offset(linktype, frame, order)?;
    let version = frame.get(ip)? >> 4;
    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    let (udp, end, v6) = match version {
        4 => {
            let ihl = usize::from(frame.get(ip)? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes(frame.get(ip + 2..ip + 4)?.try_into().ok()?));
            let frag = u16::from_be_bytes(frame.get(ip + 6..ip + 8)?.try_into().ok()?);
            if *frame.get(ip + 9)? != 17 || frag & 0x3fff != 0 || ihl < 20 || total < ihl + 8 {
                return None;
            }
            a.get_mut(..4)?.copy_from_slice(frame.get(ip + 12..ip + 16)?);
            b.get_mut(..4)?.copy_from_slice(frame.get(ip + 16..ip + 20)?);
            (ip + ihl, ip + total, false)
        }
        6 => {
            let payload = usize::from(u16::from_be_bytes(frame.get(ip + 4..ip + 6)?.try_into().ok()?));
            if *frame.get(ip + 6)? != 17 || payload < 8 {
                return None;
            }
            a.copy_from_slice(frame.get(ip + 8..ip + 24)?);
            b.copy_from_slice(frame.get(ip + 24..ip + 40)?);
            (ip + 40, ip + 40 + payload, true)
        }
        _ => return None,
    };
    let h: [u8; 8] = frame.get(udp..udp + 8)?.try_into().ok()?;
    let ulen = usize::from(u16::from_be_bytes([h[4], h[5]]));
    if end > frame.len() || ulen < 8 || udp + ulen > end {
        return None;
    }
    let flow = (a, u16::from_be_bytes([h[0], h[1]]), b, u16::from_be_bytes([h[2], h[3]]));
    Some(Udp { ip, v6, udp, end: udp + ulen, flow })
}

/// The ones' complement sum of `data`, unfolded.
fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes(c.try_into().unwrap_or_default()));
    }
    if let Some(&last) = chunks.remainder().first() {
        acc += u32::from(last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The frame with the UDP payload replaced by `payload`: IP and UDP
/// lengths and checksums fixed, any link trailer dropped.
fn rewrite(frame: &[u8], u: &Udp, payload: &[u8]) -> Option<Vec<u8>> {
    let udp_len = u16::try_from(8 + payload.len()).ok()?;
    let mut out = frame.get(..u.udp + 8)?.to_vec();
    out.extend_from_slice(payload);
    if u.v6 {
        out.get_mut(u.ip + 4..u.ip + 6)?.copy_from_slice(&udp_len.to_be_bytes());
    } else {
        let ihl = usize::from(out.get(u.ip)? & 0x0f) * 4;
        let total = u16::try_from(ihl + usize::from(udp_len)).ok()?;
        out.get_mut(u.ip + 2..u.ip + 4)?.copy_from_slice(&total.to_be_bytes());
        out.get_mut(u.ip + 10..u.ip + 12)?.copy_from_slice(&[0, 0]);
        let c = fold(sum(0, out.get(u.ip..u.ip + ihl)?));
        out.get_mut(u.ip + 10..u.ip + 12)?.copy_from_slice(&c.to_be_bytes());
    }
    out.get_mut(u.udp + 4..u.udp + 6)?.copy_from_slice(&udp_len.to_be_bytes());
    out.get_mut(u.udp + 6..u.udp + 8)?.copy_from_slice(&[0, 0]);
    let mut pseudo = 0;
    if u.v6 {
        pseudo = sum(pseudo, out.get(u.ip + 8..u.ip + 40)?);
    } else {
        pseudo = sum(pseudo, out.get(u.ip + 12..u.ip + 20)?);
    }
    pseudo += 17 + u32::from(udp_len);
    let c = match fold(sum(pseudo, out.get(u.udp..)?)) {
        0 => 0xffff,
        c => c,
    };
    out.get_mut(u.udp + 6..u.udp + 8)?.copy_from_slice(&c.to_be_bytes());
    Some(out)
}

/// What a run did, for the summary line and the flows.
#[derive(Debug, Default)]
struct Summary {
    frames: u64,
    udp: u64,
    decrypted: [u64; 2],
    /// UDP frames that held decrypted datagrams.
    frames_decrypted: u64,
    batches: u64,
    /// (entry, direction) -> datagrams and packet-number range.
    flows: HashMap<(usize, Dir), (u64, u64, u64)>,
}

/// Decrypts a whole classic pcap file.
fn decrypt_pcap(input: &[u8], entries: &[Entry]) -> Result<(Vec<u8>, Summary), String> {
    let magic = input.get(..4).ok_or("not a pcap file: shorter than its header")?;
    let order = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => Order { big: false },
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => Order { big: true },
        [0x0a, 0x0d, 0x0d, 0x0a] => {
            return Err("pcapng is not read: convert it first with `editcap -F pcap IN.pcapng IN.pcap`".into());
        }
        _ => return Err("not a classic pcap file (unknown magic)".into()),
    };
    let header = input.get(..24).ok_or("truncated pcap header")?;
    let linktype = order.u32(header.get(20..24).ok_or("truncated pcap header")?).ok_or("bad header")? & 0x0fff_ffff;
    let mut out = header.to_vec();
    let mut s = Summary::default();
    let mut hints: HashMap<Flow, (usize, Dir)> = HashMap::new();
    let mut at = 24;
    while at < input.len() {
        let rec = input.get(at..at + 16).ok_or(format!("truncated record header at byte {at}"))?;
        let incl = order.u32(rec.get(8..12).unwrap_or_default()).ok_or("bad record")? as usize;
        let orig = order.u32(rec.get(12..16).unwrap_or_default()).ok_or("bad record")? as usize;
        let frame = input.get(at + 16..at + 16 + incl).ok_or(format!("truncated record at byte {at}"))?;
        at += 16 + incl;
        s.frames += 1;
        let ts = rec.get(..8).unwrap_or_default();
        let put = |out: &mut Vec<u8>, frame: &[u8], orig: usize| {
            out.extend_from_slice(ts);
            out.extend_from_slice(&order.put_u32(frame.len() as u32));
            out.extend_from_slice(&order.put_u32(orig as u32));
            out.extend_from_slice(frame);
        };
        let udp = if incl == orig { find_udp(linktype, frame, order) } else { None };
        let Some(u) = udp else {
            put(&mut out, frame, orig);
            continue;
        };
        s.udp += 1;
        let payload = frame.get(u.udp + 8..u.end).unwrap_or_default();
        let hint = hints.get(&u.flow).copied();
        let opened = match open_one(entries, hint, payload) {
            Some(o) => Some(vec![o]),
            None => hint.and_then(|h| open_batch(entries, h, payload)).inspect(|_| s.batches += 1),
        };
        let Some(pieces) = opened else {
            put(&mut out, frame, orig);
            continue;
        };
        s.frames_decrypted += 1;
        for o in pieces {
            // The other direction of the flow has the same entry: a GSO
            // batch there is split even before a lone datagram of it opened.
            let (x, xp, y, yp) = u.flow;
            let back = if o.dir == Dir::C2s { Dir::S2c } else { Dir::C2s };
            hints.entry((y, yp, x, xp)).or_insert((o.entry, back));
            hints.insert(u.flow, (o.entry, o.dir));
            let f = s.flows.entry((o.entry, o.dir)).or_insert((0, u64::MAX, 0));
            *f = (f.0 + 1, f.1.min(o.pn), f.2.max(o.pn));
            if let Some(n) = s.decrypted.get_mut(usize::from(o.dir == Dir::S2c)) {
                *n += 1;
            }
            let new = rewrite(frame, &u, &o.inner).ok_or("a frame could not be rewritten")?;
            let len = new.len();
            put(&mut out, &new, len);
        }
    }
    Ok((out, s))
}

fn usage() -> String {
    "usage: anon-keylog-decrypt --keylog FILE [--keylog FILE...] IN.pcap OUT.pcap".into()
}

fn run(args: &[String]) -> Result<String, String> {
    let mut logs = Vec::new();
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--keylog" | "-k" => logs.push(it.next().ok_or_else(usage)?.clone()),
            "-h" | "--help" => return Err(usage()),
            _ => files.push(a.clone()),
        }
    }
    let [input, output] = files.as_slice() else { return Err(usage()) };
    if logs.is_empty() {
        return Err(usage());
    }
    let mut entries = Vec::new();
    for log in &logs {
        let text = std::fs::read_to_string(log).map_err(|e| format!("{log}: {e}"))?;
        entries.extend(parse_key_log(&text).map_err(|e| format!("{log}: {e}"))?);
    }
    if entries.is_empty() {
        return Err("no ANON_SECURE line in the key log".into());
    }
    let bytes = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
    let (out, s) = decrypt_pcap(&bytes, &entries)?;
    std::fs::write(output, out).map_err(|e| format!("{output}: {e}"))?;
    let mut lines = vec![format!(
        "{} frames, {} UDP: {} datagrams decrypted ({} client to server, {} server to client, {} GSO batches split), {} UDP datagrams left as they were (handshakes, other traffic)",
        s.frames,
        s.udp,
        s.decrypted[0] + s.decrypted[1],
        s.decrypted[0],
        s.decrypted[1],
        s.batches,
        s.udp - s.frames_decrypted,
    )];
    let mut flows: Vec<_> = s.flows.iter().collect();
    flows.sort_by_key(|((e, d), _)| (*e, *d == Dir::S2c));
    for ((e, d), (n, lo, hi)) in flows {
        let line = entries.get(*e).map_or(0, |x| x.line);
        lines.push(format!("  key log line {line}, {d:?}: {n} datagrams, packet numbers {lo}..={hi}"));
    }
    Ok(lines.join("\n"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("anon-keylog-decrypt: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seals as proto/src/secure/packet.rs does (for the tests only).
    fn seal(keys: &DirKeys, token: Option<[u8; 16]>, pn: u64, body: &[u8]) -> Vec<u8> {
        let mut d = token.map(|t| t.to_vec()).unwrap_or_default();
        d.extend_from_slice(&pn.to_be_bytes());
        let h = d.len();
        let mut nonce = keys.iv;
        for (b, p) in nonce.iter_mut().skip(4).zip(pn.to_be_bytes()) {
            *b ^= p;
        }
        let mut ct = body.to_vec();
        let tag = keys.aead.encrypt_inout_detached(&nonce.into(), &d, ct.as_mut_slice().into()).unwrap();
        d.extend_from_slice(&ct);
        d.extend_from_slice(&tag);
        let mut block = [0u8; 16];
        block.copy_from_slice(&d[h..h + 16]);
        let mut block = aes::Block::from(block);
        keys.hp.encrypt_block(&mut block);
        let mask: [u8; 16] = block.into();
        for i in 0..8 {
            d[h - 8 + i] ^= mask[i];
        }
        d
    }

    fn body(inner: &[u8], pad: usize) -> Vec<u8> {
        let mut b = vec![1u8];
        b.extend_from_slice(&(inner.len() as u16).to_be_bytes());
        b.extend_from_slice(inner);
        b.extend_from_slice(&[0x77; 16]);
        b.resize(b.len() + pad, 0);
        b
    }

    const LINE: &str = "ANON_SECURE 0101010101010101010101010101010101010101010101010101010101010101 020202020202020202020202 03030303030303030303030303030303 0404040404040404040404040404040404040404040404040404040404040404 050505050505050505050505 06060606060606060606060606060606";

    fn entries() -> Vec<Entry> {
        parse_key_log(&format!("# comment\nCLIENT_RANDOM aa bb\n{LINE}\n")).unwrap()
    }

    /// An Ethernet/IPv4/UDP frame (checksums left zero: rewrite fills them).
    fn frame(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        f.extend_from_slice(&((28 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 2]);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f.extend_from_slice(&[0xee; 6]); // a link trailer
        f
    }

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        p.extend_from_slice(&[0; 8]);
        p.extend_from_slice(&65535u32.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        for (i, f) in frames.iter().enumerate() {
            p.extend_from_slice(&(i as u32).to_le_bytes());
            p.extend_from_slice(&0u32.to_le_bytes());
            p.extend_from_slice(&(f.len() as u32).to_le_bytes());
            p.extend_from_slice(&(f.len() as u32).to_le_bytes());
            p.extend_from_slice(f);
        }
        p
    }

    /// Frames of an output pcap.
    fn frames_of(p: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 24;
        while at < p.len() {
            let n = u32::from_le_bytes(p[at + 8..at + 12].try_into().unwrap()) as usize;
            out.push(p[at + 16..at + 16 + n].to_vec());
            at += 16 + n;
        }
        out
    }

    #[test]
    fn key_log_lines_parse_and_bad_ones_are_named() {
        assert_eq!(entries().len(), 1);
        assert_eq!(entries()[0].line, 3);
        let err = parse_key_log("x\nANON_SECURE 00 11\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(unhex::<2>("zz00").is_none());
        assert_eq!(unhex::<2>("0aFf"), Some([0x0a, 0xff]));
    }

    #[test]
    fn both_directions_decrypt_and_the_rest_stays() {
        let e = entries();
        let c2s = seal(&e[0].c2s, Some([9; 16]), 0, &body(b"client inner", 5));
        let s2c = seal(&e[0].s2c, None, 7, &body(b"server inner datagram", 0));
        let mut forged = s2c.clone();
        forged[20] ^= 1;
        let input = pcap(&[frame(40000, 30000, &c2s), frame(30000, 40000, &s2c), frame(30000, 40000, &forged)]);
        let (out, s) = decrypt_pcap(&input, &e).unwrap();
        assert_eq!(s.decrypted, [1, 1]);
        let f = frames_of(&out);
        assert_eq!(f.len(), 3);
        assert_eq!(&f[0][42..], b"client inner");
        assert_eq!(&f[1][42..], b"server inner datagram");
        assert_eq!(f[2], frame(30000, 40000, &forged), "not ours: unchanged");
        // Lengths and checksums of the rewritten frame are right.
        let ip = &f[1][14..34];
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, 20 + 8 + 21);
        assert_eq!(fold(sum(0, ip)), 0, "IPv4 header checksum");
        let udp = &f[1][34..];
        let pseudo = sum(sum(0, &ip[12..20]), &[0, 17]) + udp.len() as u32;
        assert_eq!(fold(sum(pseudo, udp)), 0, "UDP checksum");
    }

    #[test]
    fn a_gso_batch_is_split_into_its_datagrams() {
        let e = entries();
        let first = seal(&e[0].s2c, None, 1, &body(&[1; 100], 3));
        let mut batch = Vec::new();
        for pn in 2..5 {
            batch.extend(seal(&e[0].s2c, None, pn, &body(&[pn as u8; 100], 3)));
        }
        batch.extend(seal(&e[0].s2c, None, 5, &body(&[5; 40], 3)));
        let input = pcap(&[frame(30000, 40000, &first), frame(30000, 40000, &batch)]);
        let (out, s) = decrypt_pcap(&input, &e).unwrap();
        assert_eq!((s.decrypted, s.batches), ([0, 5], 1));
        let f = frames_of(&out);
        assert_eq!(f.len(), 5);
        assert_eq!(&f[4][42..], &[5; 40][..]);
        assert_eq!(s.flows[&(0, Dir::S2c)], (5, 1, 5));
    }

    #[test]
    fn pcapng_and_garbage_are_refused_and_odd_frames_pass() {
        let e = entries();
        assert!(decrypt_pcap(&[0x0a, 0x0d, 0x0d, 0x0a, 0, 0], &e).unwrap_err().contains("editcap"));
        assert!(decrypt_pcap(b"nope", &e).is_err());
        let mut short = pcap(&[frame(1, 2, b"x")]);
        short.truncate(short.len() - 3);
        assert!(decrypt_pcap(&short, &e).is_err());
        // Not IP, a truncated IP header, a fragment: copied as they are.
        let mut arp = frame(1, 2, b"abc");
        arp[12] = 0x08;
        arp[13] = 0x06;
        let mut frag = frame(1, 2, b"abc");
        frag[20] = 0x20;
        let input = pcap(&[arp.clone(), frame(1, 2, b"")[..20].to_vec(), frag.clone()]);
        let (out, s) = decrypt_pcap(&input, &e).unwrap();
        assert_eq!((s.frames, s.udp), (3, 0));
        assert_eq!(out, input);
    }
}
