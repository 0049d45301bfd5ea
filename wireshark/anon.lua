-- anon.lua: Wireshark / tshark dissector for the anon transfer protocol
-- (reliable page transfer over UDP; see docs/PROTOCOL.md, whose sections the
-- comments below cite).
--
-- Install (either):
--   * copy this file into ~/.local/lib/wireshark/plugins/  (Wireshark >= 2.6;
--     older: ~/.wireshark/plugins/), then restart Wireshark; or
--   * load it for one run:  tshark -X lua_script:wireshark/anon.lua -r cap.pcapng
--
-- How it finds the protocol:
--   * heuristic UDP dissector (header plausibility check, §1): claims SYN and
--     SYN|ACK packets, then the rest of each connection it saw start; use
--     `-o udp.try_heuristic_first:TRUE` if another dissector owns the port;
--   * on the UDP port in the preference "anon.udp_port" (default 30000, the
--     port of the programs' examples; 0 = none):  -o anon.udp_port:40000
--   * "Decode As..." (UDP port -> ANON), or  tshark -d udp.port==40000,anon
--
-- Decodes: the 12-byte header (seq, ack, flags word: each flag, the reserved
-- bits, a summary string), the fast-mode offer in a SYN and answer in a
-- SYN|ACK (§6.1), the ACK information of fast-mode client ACKs (§6.3), data.
-- Secure-mode datagrams (§8) look random: one that reaches this dissector
-- (port preference or Decode As) and whose header would be implausible as
-- plaintext (reserved flag bits set, no flag, or SYN with FIN), on an
-- endpoint pair with no plaintext connection seen, is shown as an opaque
-- secure-mode datagram. Decrypting needs the client's key log and the tool
-- anon-keylog-decrypt (wireshark/README.md): Wireshark 4.0's Lua has no
-- AES-GCM. Its output decodes here as plaintext, each connection's roles
-- taken from its first (still opaque) handshake datagram.
-- Malformed content gets expert info; the dissector never raises a Lua error
-- on any input (all reads are bounds-checked, and a pcall is a safety net).
-- Written for Lua 5.1-5.4 (Wireshark 3.x-4.x): no bit-operation library.

local anon = Proto("anon", "ANON reliable transfer protocol")

local HEADER_LEN = 12
local MAGIC = 0x414e4f4e -- "ANON"
local MAX_SACK_BLOCKS = 4

-- Message types and option types of §6.1.
local msg_types = { [1] = "offer", [2] = "answer" }
local OPT_PAD, OPT_MAX_SEGMENT, OPT_RECV_WINDOW = 0, 1, 2
local OPT_SEGMENT, OPT_PAGE_LEN, OPT_PAGE_SHA256 = 3, 4, 5
local opt_names = {
    [OPT_PAD] = "PAD", [OPT_MAX_SEGMENT] = "MAX_SEGMENT", [OPT_RECV_WINDOW] = "RECV_WINDOW",
    [OPT_SEGMENT] = "SEGMENT", [OPT_PAGE_LEN] = "PAGE_LEN", [OPT_PAGE_SHA256] = "PAGE_SHA256",
}
-- Value length each known option must have (PAD: any).
local opt_len = {
    [OPT_MAX_SEGMENT] = 2, [OPT_RECV_WINDOW] = 4,
    [OPT_SEGMENT] = 2, [OPT_PAGE_LEN] = 8, [OPT_PAGE_SHA256] = 32,
}

---------------------------------------------------------------------------
-- Fields
---------------------------------------------------------------------------
local f = {
    seq         = ProtoField.uint32("anon.seq", "Sequence number", base.DEC),
    ack         = ProtoField.uint32("anon.ack", "Acknowledgment number", base.DEC),
    flags       = ProtoField.uint32("anon.flags", "Flags", base.HEX),
    flag_res    = ProtoField.uint32("anon.flags.reserved", "Reserved", base.HEX, nil, 0xFFFFFFF8),
    flag_ack    = ProtoField.bool("anon.flags.ack", "ACK", 32, nil, 0x4),
    flag_syn    = ProtoField.bool("anon.flags.syn", "SYN", 32, nil, 0x2),
    flag_fin    = ProtoField.bool("anon.flags.fin", "FIN", 32, nil, 0x1),
    flags_str   = ProtoField.string("anon.flags.str", "Flags summary"),
    len         = ProtoField.uint32("anon.len", "Payload length", base.DEC),
    direction   = ProtoField.string("anon.direction", "Direction"),
    mode        = ProtoField.string("anon.mode", "Connection mode"),
    page_offset = ProtoField.uint32("anon.page_offset", "Page offset of first byte", base.DEC),
    batch_index = ProtoField.uint32("anon.batch_index", "Datagram in GSO batch", base.DEC),
    payload     = ProtoField.bytes("anon.payload", "Payload"),

    -- Secure mode (§8): opaque without the keys
    secure       = ProtoField.bytes("anon.secure", "Secure-mode datagram (encrypted)"),
    secure_len   = ProtoField.uint32("anon.secure.len", "Secure-mode datagram length", base.DEC),

    -- Fast-mode offer / answer (§6.1)
    ext          = ProtoField.none("anon.ext", "Fast-mode extension"),
    ext_magic    = ProtoField.uint32("anon.ext.magic", "Magic", base.HEX),
    ext_version  = ProtoField.uint8("anon.ext.version", "Version", base.DEC),
    ext_type     = ProtoField.uint8("anon.ext.type", "Message type", base.DEC, msg_types),
    ext_opts_len = ProtoField.uint16("anon.ext.options_len", "Options length", base.DEC),
    ext_opt      = ProtoField.none("anon.ext.option", "Option"),
    opt_type     = ProtoField.uint8("anon.ext.option.type", "Option type", base.DEC, opt_names),
    opt_len      = ProtoField.uint8("anon.ext.option.len", "Option length", base.DEC),
    opt_value    = ProtoField.bytes("anon.ext.option.value", "Option value"),
    max_segment  = ProtoField.uint16("anon.ext.max_segment", "Max segment", base.DEC),
    recv_window  = ProtoField.uint32("anon.ext.recv_window", "Receive window", base.DEC),
    padding      = ProtoField.bytes("anon.ext.padding", "Padding"),
    segment      = ProtoField.uint16("anon.ext.segment", "Segment size", base.DEC),
    page_len     = ProtoField.uint64("anon.ext.page_len", "Page length", base.DEC),
    sha256       = ProtoField.bytes("anon.ext.sha256", "Page SHA-256"),
    sha256_hex   = ProtoField.string("anon.ext.sha256_hex", "Page SHA-256 (hex)"),
    ext_trailer  = ProtoField.bytes("anon.ext.trailer", "Bytes after the options (ignored)"),

    -- ACK information of a fast-mode client ACK (§6.3)
    ackinfo      = ProtoField.none("anon.ackinfo", "ACK information"),
    window       = ProtoField.uint32("anon.ackinfo.window", "Receive window", base.DEC),
    sack_count   = ProtoField.uint8("anon.sack.count", "SACK blocks", base.DEC),
    sack_block   = ProtoField.none("anon.sack.block", "SACK block"),
    sack_left    = ProtoField.uint32("anon.sack.left", "Left edge (start)", base.DEC),
    sack_right   = ProtoField.uint32("anon.sack.right", "Right edge (end, exclusive)", base.DEC),
    sack_size    = ProtoField.uint32("anon.sack.size", "Bytes in block", base.DEC),
}
local field_list = {}
for _, v in pairs(f) do field_list[#field_list + 1] = v end
anon.fields = field_list

local ef = {
    reserved    = ProtoExpert.new("anon.reserved_bits", "Reserved flag bits set (ignored on receipt)",
                                  expert.group.PROTOCOL, expert.severity.NOTE),
    malformed   = ProtoExpert.new("anon.ext.malformed", "Malformed fast-mode extension (ignored as a whole)",
                                  expert.group.MALFORMED, expert.severity.WARN),
    unknown_opt = ProtoExpert.new("anon.ext.unknown_option", "Unknown option type (skipped)",
                                  expert.group.UNDECODED, expert.severity.NOTE),
    not_ext     = ProtoExpert.new("anon.ext.unknown", "SYN payload is not a fast-mode message",
                                  expert.group.UNDECODED, expert.severity.WARN),
    short_syn   = ProtoExpert.new("anon.ext.short_syn", "Offer in a SYN shorter than 68 bytes: server answers baseline",
                                  expert.group.PROTOCOL, expert.severity.NOTE),
    bad_ackinfo = ProtoExpert.new("anon.ackinfo.malformed", "Malformed ACK information (ignored)",
                                  expert.group.MALFORMED, expert.severity.WARN),
    guessed     = ProtoExpert.new("anon.guessed", "Connection start not seen: payload role guessed",
                                  expert.group.SEQUENCE, expert.severity.CHAT),
    internal    = ProtoExpert.new("anon.internal", "Lua Error in anon dissector",
                                  expert.group.MALFORMED, expert.severity.ERROR),
    secure      = ProtoExpert.new("anon.secure.encrypted",
                                  "Secure-mode datagram: encrypted (decrypt with anon-keylog-decrypt and the client's key log)",
                                  expert.group.DECRYPTION, expert.severity.CHAT),
    inferred    = ProtoExpert.new("anon.secure.isn_inferred",
                                  "ISNs of a decrypted secure connection inferred from the client's first datagram",
                                  expert.group.SEQUENCE, expert.severity.CHAT),
}
anon.experts = { ef.reserved, ef.malformed, ef.unknown_opt, ef.not_ext, ef.short_syn,
                 ef.bad_ackinfo, ef.guessed, ef.internal, ef.secure, ef.inferred }

anon.prefs.udp_port = Pref.uint("UDP port", 30000, "UDP port decoded as ANON (0 = none)")
anon.prefs.heuristic = Pref.bool("Heuristic detection", true,
                                 "Try the ANON heuristic on any UDP datagram")

local data_dissector = Dissector.get("data")

---------------------------------------------------------------------------
-- Helpers
---------------------------------------------------------------------------

-- Bit `b` (0-based) of a non-negative integer, without a bit library.
local function bit(v, b) return math.floor(v / 2 ^ b) % 2 == 1 end

-- TCP-style summary: "SYN, ACK", "FIN, ACK", "ACK", "<none>".
local function flag_summary(word)
    local names = {}
    if bit(word, 1) then names[#names + 1] = "SYN" end
    if bit(word, 0) then names[#names + 1] = "FIN" end
    if bit(word, 2) then names[#names + 1] = "ACK" end
    if #names == 0 then return "<none>" end
    return table.concat(names, ", ")
end

local function u32sub(a, b) return (a - b) % 4294967296 end

-- Integer to decimal text, the same under Lua 5.1-5.4 (no "100.0").
local function n2s(x) return string.format("%d", x) end

---------------------------------------------------------------------------
-- Connection tracking: who is client and server, ISNs, fast mode or not.
-- State lives per UDP endpoint pair; the result for each frame is frozen on
-- the first pass so that random re-dissection in the GUI stays consistent.
---------------------------------------------------------------------------
local conns = {}     -- "a|b" -> { client=, server=, client_isn=, server_isn=, offered=, fast=, secure= }
local per_frame = {} -- frame number -> snapshot of the connection for this frame
local secure_pairs = {} -- "a|b" -> endpoint that sent the pair's first secure-mode datagram (the client)

function anon.init()
    conns = {}
    per_frame = {}
    secure_pairs = {}
end

local function endpoint(addr, port) return tostring(addr) .. "#" .. tostring(port) end

local function conn_key(a, b)
    if a < b then return a .. "|" .. b end
    return b .. "|" .. a
end

---------------------------------------------------------------------------
-- Fast-mode offer / answer (§6.1). Returns true if the message is valid.
---------------------------------------------------------------------------
local function dissect_ext(tvb, tree, kind_expected)
    local len = tvb:len()
    local root = tree:add(f.ext, tvb())
    local ok = true
    local function bad(item, why)
        ok = false
        item:add_proto_expert_info(ef.malformed, "Malformed fast-mode extension: " .. why)
    end
    if len < 8 then
        bad(root, "shorter than the 8-byte prefix")
        if len > 0 then root:add(f.payload, tvb()) end
        return false
    end
    local magic = tvb(0, 4):uint()
    local mi = root:add(f.ext_magic, tvb(0, 4))
    if magic ~= MAGIC then bad(mi, "wrong magic") end
    local version = tvb(4, 1):uint()
    local vi = root:add(f.ext_version, tvb(4, 1))
    if version ~= 1 then bad(vi, "unknown version " .. n2s(version)) end
    local kind = tvb(5, 1):uint()
    local ti = root:add(f.ext_type, tvb(5, 1))
    if kind ~= kind_expected then
        bad(ti, "message type " .. n2s(kind) .. ", expected " .. n2s(kind_expected) .. " (" .. msg_types[kind_expected] .. ")")
    end
    local opts_len = tvb(6, 2):uint()
    local oli = root:add(f.ext_opts_len, tvb(6, 2))
    local opts_end = 8 + opts_len
    if opts_end > len then
        bad(oli, "options length " .. n2s(opts_len) .. " runs past the datagram")
        opts_end = len
    end

    local seen = {}
    local summary = {}
    local vals = {}
    local off = 8
    while off < opts_end do
        if off + 2 > opts_end then
            local ti2 = root:add(f.payload, tvb(off, opts_end - off))
            bad(ti2, "truncated option (lone trailing byte)")
            break
        end
        local otype = tvb(off, 1):uint()
        local olen = tvb(off + 1, 1):uint()
        local name = opt_names[otype] or ("unknown (" .. n2s(otype) .. ")")
        local avail = math.min(olen, opts_end - off - 2)
        local oi = root:add(f.ext_opt, tvb(off, 2 + avail))
        oi:set_text("Option: " .. name .. ", length " .. n2s(olen))
        oi:add(f.opt_type, tvb(off, 1))
        local li = oi:add(f.opt_len, tvb(off + 1, 1))
        if off + 2 + olen > opts_end then
            bad(li, "option " .. name .. " of length " .. n2s(olen) .. " runs past the options")
            if avail > 0 then oi:add(f.opt_value, tvb(off + 2, avail)) end
            break
        end
        local v = olen > 0 and tvb(off + 2, olen) or nil
        if opt_len[otype] and opt_len[otype] ~= olen then
            bad(li, name .. " must be " .. n2s(opt_len[otype]) .. " bytes, is " .. n2s(olen))
            if v then oi:add(f.opt_value, v) end
        elseif otype == OPT_PAD then
            if v then oi:add(f.padding, v) end
        elseif otype == OPT_MAX_SEGMENT then
            oi:add(f.max_segment, v)
            oi:append_text(": " .. n2s(v:uint()))
            summary[#summary + 1] = "MaxSeg=" .. n2s(v:uint())
            if v:uint() == 0 then bad(oi, "MAX_SEGMENT is zero") end
        elseif otype == OPT_RECV_WINDOW then
            oi:add(f.recv_window, v)
            oi:append_text(": " .. n2s(v:uint()))
            summary[#summary + 1] = "Win=" .. n2s(v:uint())
        elseif otype == OPT_SEGMENT then
            oi:add(f.segment, v)
            vals.segment = v:uint()
            oi:append_text(": " .. n2s(v:uint()))
            summary[#summary + 1] = "Seg=" .. n2s(v:uint())
            if v:uint() == 0 then bad(oi, "SEGMENT is zero") end
        elseif otype == OPT_PAGE_LEN then
            oi:add(f.page_len, v)
            oi:append_text(": " .. tostring(v:uint64()))
            summary[#summary + 1] = "PageLen=" .. tostring(v:uint64())
        elseif otype == OPT_PAGE_SHA256 then
            oi:add(f.sha256, v)
            local hex = string.lower(tostring(v:bytes()))
            oi:add(f.sha256_hex, v, hex)
            oi:append_text(": " .. hex)
        else
            oi:add_proto_expert_info(ef.unknown_opt)
            if v then oi:add(f.opt_value, v) end
        end
        seen[otype] = true
        off = off + 2 + olen
    end

    local required = kind_expected == 1 and { OPT_MAX_SEGMENT, OPT_RECV_WINDOW }
                     or { OPT_SEGMENT, OPT_PAGE_LEN, OPT_PAGE_SHA256 }
    for _, r in ipairs(required) do
        if not seen[r] then bad(root, "required option " .. opt_names[r] .. " missing") end
    end
    if 8 + opts_len < len then
        root:add(f.ext_trailer, tvb(8 + opts_len))
    end
    root:set_text("Fast-mode " .. (msg_types[kind_expected]) ..
                  (ok and "" or " (malformed: ignored)") ..
                  (#summary > 0 and (": " .. table.concat(summary, ", ")) or ""))
    return ok, summary, vals
end

---------------------------------------------------------------------------
-- ACK information of a fast-mode client ACK (§6.3). Returns valid, text.
---------------------------------------------------------------------------
local function dissect_ackinfo(tvb, tree, ack)
    local len = tvb:len()
    local root = tree:add(f.ackinfo, tvb())
    if len < 5 then
        root:add_proto_expert_info(ef.bad_ackinfo, "Malformed ACK information: " .. n2s(len) .. " bytes, at least 5 needed")
        root:add(f.payload, tvb())
        return false
    end
    local win = tvb(0, 4):uint()
    root:add(f.window, tvb(0, 4))
    local n = tvb(4, 1):uint()
    local ni = root:add(f.sack_count, tvb(4, 1))
    local valid = true
    if n > MAX_SACK_BLOCKS then
        ni:add_proto_expert_info(ef.bad_ackinfo, "Malformed ACK information: " .. n2s(n) .. " SACK blocks, at most 4")
        valid = false
    end
    if len ~= 5 + 8 * n then
        root:add_proto_expert_info(ef.bad_ackinfo, "Malformed ACK information: length " .. n2s(len) ..
                                   " does not match " .. n2s(n) .. " SACK blocks (" .. n2s(5 + 8 * n) .. ")")
        valid = false
    end
    local texts = {}
    local off = 5
    for i = 1, n do
        if off + 8 > len then break end
        local left, right = tvb(off, 4):uint(), tvb(off + 4, 4):uint()
        local bi = root:add(f.sack_block, tvb(off, 8))
        bi:add(f.sack_left, tvb(off, 4))
        bi:add(f.sack_right, tvb(off + 4, 4))
        local size = u32sub(right, left)
        bi:add(f.sack_size, tvb(off, 8), size):set_generated()
        bi:set_text(string.format("SACK block %d: %d-%d (%d bytes, %d beyond the ack)",
                                  i, left, right, size, u32sub(left, ack)))
        texts[#texts + 1] = n2s(left) .. "-" .. n2s(right)
        off = off + 8
    end
    if off < len then root:add(f.payload, tvb(off)) end
    local text = "Win=" .. n2s(win)
    if #texts > 0 then text = text .. " SACK=" .. table.concat(texts, ",") end
    root:set_text("ACK information" .. (valid and "" or " (malformed: ignored)") .. ": " .. text)
    return valid, text
end

-- Connection tracking (first pass only; later passes read the snapshot):
-- who is client and who server, the ISNs, and whether fast mode is on.
local function track(tvb, pinfo)
    local snap = per_frame[pinfo.number]
    if pinfo.visited and snap then return snap end
    local seq, word = tvb(0, 4):uint(), tvb(8, 4):uint()
    local is_ack, is_syn = bit(word, 2), bit(word, 1)
    local src, dst = endpoint(pinfo.src, pinfo.src_port), endpoint(pinfo.dst, pinfo.dst_port)
    local key = conn_key(src, dst)
    local c = conns[key]
    if is_syn and not is_ack then
        c = { client = src, server = dst, client_isn = seq }
        conns[key] = c
    elseif is_syn and is_ack then
        if not c or c.server ~= src then
            c = { client = dst, server = src }
            conns[key] = c
        end
        c.server_isn = seq
    elseif not c and secure_pairs[key] then
        -- Decrypted secure mode: the SYN and SYN|ACK travelled inside the
        -- (still opaque) handshake, whose first datagram came from the
        -- client. The first data datagram is the server's early segment
        -- (PROTOCOL.md §8.3: seq = server ISN + 1, ack = client ISN + 1)
        -- or, when there is none, the client's handshake ACK (seq = client
        -- ISN + 1, ack = server ISN + 1).
        local client = secure_pairs[key]
        c = { client = client, server = (client == src) and dst or src, secure = true, fast = true }
        if is_ack then
            local own, peer = (seq - 1) % 4294967296, (tvb(4, 4):uint() - 1) % 4294967296
            if client == src then
                c.client_isn, c.server_isn = own, peer
            else
                c.server_isn, c.client_isn = own, peer
            end
            c.inferred_at = pinfo.number
        end
        conns[key] = c
    end
    snap = {}
    if c then
        snap.role = (c.client == src) and "client" or ((c.server == src) and "server" or nil)
        snap.client_isn, snap.server_isn = c.client_isn, c.server_isn
        snap.fast, snap.segment = c.fast, c.segment
        snap.secure, snap.inferred = c.secure, c.inferred_at == pinfo.number
    end
    snap.conn = c
    per_frame[pinfo.number] = snap
    return snap
end

---------------------------------------------------------------------------
-- The main dissector
---------------------------------------------------------------------------
-- Dissects one datagram (one PDU); returns its Info text.
local function dissect_pdu(tvb, pinfo, tree, batch_index)
    local len = tvb:len()
    local t = tree:add(anon, tvb())
    if len < HEADER_LEN then
        t:add_proto_expert_info(ef.malformed, "Datagram shorter than the 12-byte header (dropped by peers)")
        return "Short datagram (" .. n2s(len) .. " bytes)"
    end

    local seq, ack, word = tvb(0, 4):uint(), tvb(4, 4):uint(), tvb(8, 4):uint()
    local is_ack, is_syn, is_fin = bit(word, 2), bit(word, 1), bit(word, 0)
    local plen = len - HEADER_LEN
    local summary = flag_summary(word)

    t:add(f.seq, tvb(0, 4))
    t:add(f.ack, tvb(4, 4))
    local fi = t:add(f.flags, tvb(8, 4))
    fi:append_text(" (" .. summary .. ")")
    local ri = fi:add(f.flag_res, tvb(8, 4))
    if word >= 8 then ri:add_proto_expert_info(ef.reserved) end
    fi:add(f.flag_ack, tvb(8, 4))
    fi:add(f.flag_syn, tvb(8, 4))
    fi:add(f.flag_fin, tvb(8, 4))
    fi:add(f.flags_str, tvb(8, 4), summary):set_generated()
    t:add(f.len, plen):set_generated()

    local snap = per_frame[pinfo.number] or {}

    local info = summary .. " Seq=" .. n2s(seq) .. (is_ack and (" Ack=" .. n2s(ack)) or "") .. " Len=" .. n2s(plen)
    local extra = nil
    local payload = plen > 0 and tvb(HEADER_LEN) or nil

    if snap.role then
        t:add(f.direction, snap.role == "client" and "client -> server" or "server -> client"):set_generated()
    end

    if is_syn and not is_ack then
        -- SYN: the fast-mode offer, if any (§6.1).
        if payload then
            if payload:len() >= 4 and payload(0, 4):uint() == MAGIC then
                local ok, s = dissect_ext(payload:tvb(), t, 1)
                if ok and len < HEADER_LEN + 56 then t:add_proto_expert_info(ef.short_syn) end
                if snap.conn and not pinfo.visited then snap.conn.offered = ok end
                extra = "Offer" .. ((s and #s > 0) and (" " .. table.concat(s, " ")) or "") .. (ok and "" or " [malformed]")
            else
                t:add_proto_expert_info(ef.not_ext)
                t:add(f.payload, payload)
            end
        end
    elseif is_syn and is_ack then
        -- SYN|ACK: the answer, if any (§6.1).
        local ok = false
        if payload then
            if payload:len() >= 4 and payload(0, 4):uint() == MAGIC then
                local s, vals
                ok, s, vals = dissect_ext(payload:tvb(), t, 2)
                if ok and snap.conn and not pinfo.visited then snap.conn.segment = vals.segment end
                extra = "Answer" .. ((s and #s > 0) and (" " .. table.concat(s, " ")) or "") .. (ok and "" or " [malformed]")
            else
                t:add_proto_expert_info(ef.not_ext)
                t:add(f.payload, payload)
            end
        end
        if snap.conn and not pinfo.visited then snap.conn.fast = ok end
        snap.fast = ok
    elseif payload then
        -- Data (server) or ACK information (fast-mode client).
        local as_ackinfo
        if snap.role == "client" then
            as_ackinfo = true
        elseif snap.role == "server" then
            as_ackinfo = false
        else
            -- Start of the connection not seen: guess from the length.
            local n = payload:len() >= 5 and payload(4, 1):uint() or 255
            as_ackinfo = n <= MAX_SACK_BLOCKS and payload:len() == 5 + 8 * n
            t:add_proto_expert_info(ef.guessed)
        end
        if as_ackinfo then
            if snap.role == "client" and snap.fast == false then
                t:add_proto_expert_info(ef.bad_ackinfo, "Payload on a client packet of a baseline connection")
            end
            local _, s = dissect_ackinfo(payload:tvb(), t, ack)
            extra = s
        else
            if snap.server_isn then
                t:add(f.page_offset, u32sub(seq, snap.server_isn + 1)):set_generated()
            end
            data_dissector:call(payload:tvb(), pinfo, t)
        end
    end

    if snap.secure then
        t:add(f.mode, "secure (decrypted)"):set_generated()
        if snap.inferred then t:add_proto_expert_info(ef.inferred) end
    elseif snap.fast ~= nil then
        t:add(f.mode, snap.fast and "fast" or "baseline"):set_generated()
    end
    if extra then info = info .. " " .. extra end
    if batch_index then
        t:add(f.batch_index, batch_index):set_generated()
    end
    t:append_text(", " .. info)
    return info
end

-- A plausible data-segment header at `off` (ACK set, no SYN, reserved bits
-- zero) and, if given, with sequence number `seq`.
local function plausible_segment(tvb, off, seq)
    if off + HEADER_LEN > tvb:len() then return false end
    local word = tvb(off + 8, 4):uint()
    if word >= 8 or not bit(word, 2) or bit(word, 1) then return false end
    return seq == nil or tvb(off, 4):uint() == seq % 4294967296
end

-- A fast-mode server may hand the kernel a batch of equal segments at once
-- (UDP GSO); a capture on the sending host then shows one large UDP datagram
-- holding several of our datagrams back to back, each (12 + SEGMENT) bytes,
-- the last one possibly shorter. Returns the stride, or nil for one datagram.
local function batch_stride(tvb, snap)
    local len = tvb:len()
    local word = tvb(8, 4):uint()
    if bit(word, 1) or snap.role == "client" then return nil end
    local seq = tvb(0, 4):uint()
    if snap.segment and snap.role == "server" then
        local stride = HEADER_LEN + snap.segment
        if len > stride and plausible_segment(tvb, stride) then return stride end
        return nil
    end
    -- Segment size unknown: only a datagram longer than the largest
    -- segment can be a batch; find the size by the next header's seq.
    if snap.fast == false or len <= HEADER_LEN + 1440 then return nil end
    for s = 1, 1440 do
        if plausible_segment(tvb, HEADER_LEN + s, seq + s) then return HEADER_LEN + s end
    end
    return nil
end

-- Shortest secure-mode datagram: a server data datagram of an empty inner
-- header (packet number 8, body prefix 3, inner header 12, tag 16).
local SECURE_MIN_LEN = 39

-- Whether a datagram is secure mode (§8), not plaintext: its header would be
-- implausible (unused flag bits set, no flag, or SYN and FIN together: a
-- random flags word is plausible once in 2^29) on an endpoint pair without a
-- plaintext connection (there, odd flags are a plaintext peer's doing).
local function looks_secure(tvb, pinfo)
    local snap = per_frame[pinfo.number]
    if pinfo.visited and snap then return snap.opaque == true end
    if tvb:len() < SECURE_MIN_LEN then return false end
    local word = tvb(8, 4):uint()
    if not (word == 0 or word >= 8 or word == 3 or word == 7) then return false end
    local src = endpoint(pinfo.src, pinfo.src_port)
    local key = conn_key(src, endpoint(pinfo.dst, pinfo.dst_port))
    local c = conns[key]
    if c and not c.secure then return false end
    if not secure_pairs[key] then secure_pairs[key] = src end
    per_frame[pinfo.number] = { opaque = true }
    return true
end

local function dissect_secure(tvb, pinfo, tree)
    local len = tvb:len()
    local t = tree:add(anon, tvb())
    t:add(f.secure, tvb())
    t:add(f.secure_len, len):set_generated()
    t:add_proto_expert_info(ef.secure)
    local info = "anon secure-mode datagram (encrypted), " .. n2s(len) .. " bytes"
    t:append_text(", " .. info)
    pinfo.cols.info:set(info)
end

local function dissect(tvb, pinfo, tree)
    pinfo.cols.protocol:set("ANON")
    local len = tvb:len()
    if len < HEADER_LEN then
        pinfo.cols.info:set(dissect_pdu(tvb, pinfo, tree))
        return
    end
    if looks_secure(tvb, pinfo) then
        dissect_secure(tvb, pinfo, tree)
        return
    end
    local snap = track(tvb, pinfo)
    local stride = batch_stride(tvb, snap)
    if not stride then
        pinfo.cols.info:set(dissect_pdu(tvb, pinfo, tree))
        return
    end
    local count = math.ceil(len / stride)
    local first, last
    local i, off = 1, 0
    while off < len do
        local n = math.min(stride, len - off)
        last = dissect_pdu(tvb(off, n):tvb(), pinfo, tree, i)
        first = first or last
        i, off = i + 1, off + n
    end
    local tail = last:match("^FIN") and (", last: " .. last) or ""
    pinfo.cols.info:set(first .. " [GSO batch: " .. n2s(count) .. " datagrams, " .. n2s(len) .. " bytes" .. tail .. "]")
end

-- Runs the dissector; never lets a Lua error escape, but makes any visible.
local function dissect_safely(tvb, pinfo, tree)
    local ok, err = pcall(dissect, tvb, pinfo, tree)
    if not ok then
        tree:add_proto_expert_info(ef.internal, "Lua Error in anon dissector: " .. tostring(err))
    end
    return tvb:len()
end

anon.dissector = dissect_safely

---------------------------------------------------------------------------
-- Heuristic: a plausible header (§1); a SYN with an empty or "ANON" payload
-- starts a connection, and later packets are claimed only on known ones.
---------------------------------------------------------------------------
local function heuristic(tvb, pinfo, tree)
    if not anon.prefs.heuristic then return false end
    local len = tvb:len()
    if len < HEADER_LEN then return false end
    local word = tvb(8, 4):uint()
    -- Unused flag bits are sent as zero; every packet has some flag; SYN and
    -- FIN never come together.
    if word == 0 or word >= 8 or word == 3 or word == 7 then return false end
    local syn, ack = bit(word, 1), bit(word, 2)
    if syn then
        -- A SYN carries ack 0; SYN payloads are empty or a fast-mode message.
        if not ack and tvb(4, 4):uint() ~= 0 then return false end
        if len > HEADER_LEN and (len < HEADER_LEN + 4 or tvb(HEADER_LEN, 4):uint() ~= MAGIC) then
            return false
        end
    else
        -- Anything else only on a connection whose SYN or SYN|ACK was seen:
        -- a bare header check is too weak to claim arbitrary UDP traffic.
        -- (Mid-stream captures: use the port preference or Decode As.)
        local snap = per_frame[pinfo.number]
        if pinfo.visited then
            if not (snap and snap.conn) then return false end
        elseif not conns[conn_key(endpoint(pinfo.src, pinfo.src_port), endpoint(pinfo.dst, pinfo.dst_port))] then
            return false
        end
    end
    dissect_safely(tvb, pinfo, tree)
    return true
end
anon:register_heuristic("udp", heuristic)

-- Port preference and Decode As.
local udp_table = DissectorTable.get("udp.port")
local current_port = 0
local function apply_port()
    if current_port ~= 0 then udp_table:remove(current_port, anon) end
    current_port = anon.prefs.udp_port
    if current_port ~= 0 then udp_table:add(current_port, anon) end
end
function anon.prefs_changed() apply_port() end
apply_port()
udp_table:add_for_decode_as(anon)
