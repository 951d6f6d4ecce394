// Integer weights times up to 16 activation rows on tensor cores: group-wise 2-, 3-, 4- and 8-bit codes
// (formats.int_group), int8 weight-only (formats.int8_rows) and NF4/FP4 (formats.nf4), each in its
// canonical layout.
//
// y^T = W x^T with W as mma.sync's A operand (m16n8k16: 16 outputs x 16 inputs) and the activations as
// its B operand (8 rows a fragment; "swap AB"). The mma's k index is only a summation index, so each
// thread feeds it the codes it loads from the canonical rows, no repacking: thread (g, t) of a warp
// (g = lane / 4, t = lane % 4) reads U consecutive words of rows g and g + 8 of a 16-output tile (the
// CODES inputs of each word, from k = chunk + CODES U t) and the activations of those same inputs. One
// lop3 turns two codes (or nibbles) of a word into the 16-bit values OFFSET + code (OR-ed into the bits of
// 1024.0 fp16 / 128.0 bf16: the "magic number" conversion of FasterTransformer and Marlin, Frantar et al.
// 2024), so a code costs about one instruction and the products run on tensor cores with fp32
// accumulation. Per group (chunks of CK inputs inside one quantization group) the zero and scale are
// applied once per output and row:
//
//     y[n, m] += s[n] * (sum_k (OFFSET + c[n, k]) x[m, k] - (OFFSET + z[n]) * sum_k x[m, k]).
//
// 2 and 4 bits: code i of a word (CODES = 32 / BITS of them) is input kw + i. The word makes CODES / 4 mma
// k-steps q: the A pairs (codes 2q, 2q + CODES / 2) and (2q + 1, 2q + 1 + CODES / 2), one lop3 each after a
// shift, and the B pairs of the same inputs, built once per launch with prmt.
// 3 bits (GPTQ's stream: 32 codes fill a unit of 3 words, code i at bits 3i .. 3i + 2; a "word" below is a
// unit, CODES = 32): no shift puts two codes 16 bits apart, but the magic conversion works at any mantissa
// position: a code at bits p .. p + 2 of a half reads as OFFSET + code 2^p. PLAN3 pairs the 32 codes so that
// each pair lies in one 32-bit window of the unit (9 funnel shifts a unit and row), its low code at bit
// p <= 4 and its high code at 16 + p2 (p2 <= 4; bf16 keeps 7 mantissa bits), one lop3 a pair with its own
// mask. The activation of an input whose code sits at 2^p is scaled by 2^-p when the B pairs are built
// (exact in 16 bits), so the products are the codes' own; the offset then meets the scaled activations and
// the zero the plain ones (a second sum, from an mma with 2^p in A):
//
//     3 bits: y[n, m] += s[n] * (sum_k (OFFSET + c 2^p) x 2^-p - OFFSET sum_k x 2^-p - z[n] sum_k x).
// 8 bits: byte i of the word is input kw + i, a code u = lo + 16 hi with nibbles lo and hi (int8 weight-only's
// signed codes c, SIGNED8, become u = c ^ 0x80 = c + 128 by flipping hi's top bit in the same lop3). bf16
// holds only 7-bit magic offsets, so the bytes go through the tensor cores as nibble planes sharing one B
// fragment: step L takes the low nibbles of bytes (0, 2) and (1, 3), step H the high ones, into
// accumulators aL and aH, and with the zero z (128 for symmetric and signed codes)
//
//     8 bits: y[n, m] += s[n] * (aL + 16 aH - (17 OFFSET + z[n]) * sum_k x[m, k]).
//
// NF4/FP4 (LUT4; QLoRA, Dettmers et al. 2023): w = table[code] * absmax[block], two codes a byte, the first
// input's in the high nibble. A byte is looked up whole: a 256-entry table of 16-bit pairs (table[hi],
// table[lo]) gives the A register of inputs (2j, 2j + 1), which meets the activations as they lie (no prmt).
// Each block builds the table in shared memory from the 16 values, 32 copies, so lane L reads copy L and
// the 32 lanes never share a bank. No offset, so no activation sums: y[n, m] += absmax[n] * sum_k w x.
// The absmax is fp32, or with double quantization (DQ) absmax_q * dq_scale[block / 256] + dq_mean.
//
// A block of WARPS warps covers TILES tiles of 16 outputs; warp w takes K slice blockIdx.y * WARPS + w
// of KS inputs, keeps that slice's activation fragments in registers (or shared memory), and streams the
// tiles' words with the next DEPTH tiles' loads in flight. The warps' sums
// meet in shared memory; when K needs more than one block (gridDim.y > 1), each block writes an fp32
// partial and the last block of an output range to arrive adds them up (a per-range counter that it
// resets; the stream-K "fix-up", Osama et al. 2023). With CLUSTER the K blocks of an output range are one
// thread-block cluster instead (Hopper): each keeps its sums in shared memory and, after a cluster barrier,
// block r adds up share r of the range's outputs from every block's shared memory (DSMEM), in block order,
// so that no partial goes through global memory and no block waits on a counter.
//
// Compile-time settings (-D): BITS (2, 3, 4 or 8), BF16 (activations bf16, else fp16), U (words a thread reads per
// row and chunk: 1, 2 or 4; 3 bits: one unit of 3 words), KS (inputs per warp, a multiple of CK), G (group size: a
// multiple of CK, or K and more), WARPS, TILES, DEPTH (tiles loaded ahead), R8 (8-row activation fragments: 1 or 2),
// HAS_ZERO (else the symmetric zero 2 ** (BITS - 1)), SIGNED8 (8-bit codes are signed), LUT4 and DQ (NF4/FP4 codes
// with BITS 4 and G the absmax block; double-quantized absmax), SMEM_X (keep the activation fragments in shared
// memory, read per chunk, instead of registers: the fragments of a 512-input slice take 64 registers a thread, most
// of them zeros at one row, and registers allowed one 8-warp block per multiprocessor: kern11), EARLY (the first
// tiles' loads go out before the activations are read; int8 and the NF4 register shape, kern15), ASYNC (2 or 3: each
// warp's words through a ring of that many tiles in shared memory, copied by cp.async, ASYNC - 1 tiles ahead,
// instead of the register ring; 2- and 3-bit codes at one row, kern17), TILED (the words in tile order,
// formats/word_tiles.py: NF4/FP4, int8 weight-only and int_group layers on CUDA, kern17-19), PREFETCH (a block's
// first tiles prefetched into L2 before anything else), L2_AHEAD (each warp prefetches into L2 the tile that many
// ahead of the one it loads, so that more of its words are on their way than its registers hold), PDL (programmatic
// dependent launch, cuda_common.cuh: the block waits for the kernel ahead after its prefetches and, with
// LAUNCH_NEXT 1, lets the next launch start once its tiles are done, kern20, with LAUNCH_NEXT 2 as it starts,
// kern29), PRELOAD (with PDL, the EARLY tiles' words and qparams load before the wait: only where
// settled_weights.py finds the layer unwritten since its last launch, so no kernel ahead wrote them), CLUSTER (the
// K blocks, gridDim.y of them, as one cluster: at most 8, compute capability 9.0), and optionally MIN_BLOCKS
// (blocks per multiprocessor that the register use must allow: cuda_common.cuh's LAUNCH_BOUNDS). Shared memory is
// dynamic: the launch passes shared_bytes(...) (cuda_mma.py).
//
// The types, conversions and mma.sync wrapper it shares with the other kernels are in cuda_common.cuh.

#if BITS == 3
#define CODES 32              // inputs per unit of 3 words
#define UNIT_WORDS 3
#if U != 1
#error "3-bit codes take one unit a thread and chunk (U = 1)"
#endif
#else
#define CODES (32 / BITS)     // inputs per word
#define UNIT_WORDS 1
#endif
#define XREGS (CODES / 2)     // B registers per word (pairs of activations)
#define CK (4 * U * CODES)    // inputs per chunk (4 threads x U words)
#define NCH (KS / CK)         // chunks per warp slice
#define GCH ((G < KS ? G : KS) / CK)  // chunks per correction: a group, or the slice when a group spans it
#define NGRP (NCH / GCH)      // corrections per warp slice
#define OUT_TILE 16
#define NVALS (TILES * 32 * 4 * R8)  // a warp's fp32 results per block

#ifndef EARLY  // the newer settings default off
#define EARLY 0
#endif
#ifndef PRELOAD
#define PRELOAD 0
#endif
#define EARLY_TILES (EARLY || PRELOAD ? (DEPTH > 0 ? DEPTH : 1) : 0)  // tiles loaded before the activations are read
#ifndef ASYNC
#define ASYNC 0
#endif
#ifndef LAUNCH_NEXT
#define LAUNCH_NEXT 1
#endif
#ifndef PREFETCH
#define PREFETCH 0
#endif
#ifndef L2_AHEAD
#define L2_AHEAD 0
#endif
#ifndef CLUSTER
#define CLUSTER 1
#endif
#if CLUSTER > 1 && __CUDA_ARCH__ < 900
#error "CLUSTER needs thread-block clusters (compute capability 9.0)"
#endif
#if CLUSTER > 1  // the K blocks of an output range, one cluster
#define CLUSTER_DIMS __cluster_dims__(1, CLUSTER, 1)
#else
#define CLUSTER_DIMS
#endif
#if ASYNC  // a ring of ASYNC tiles a warp in shared memory: DEPTH tiles ahead, loaded first (as EARLY)
#if ASYNC < 2
#error "ASYNC rings hold at least 2 tiles (one ahead)"
#endif
#undef DEPTH
#define DEPTH (ASYNC - 1)
#undef EARLY_TILES
#define EARLY_TILES DEPTH
#endif
#ifndef TILED
#define TILED 0
#endif
#ifndef LUT4
#define LUT4 0
#endif
#ifndef DQ
#define DQ 0
#endif
#if LUT4 && (BITS != 4 || HAS_ZERO)
#error "LUT4 takes 4-bit codes without zeros"
#endif
#define LUT_BYTES (LUT4 ? 256 * 32 * 4 : 0)  // the pair table, 32 copies
#define SYMMETRIC_ZERO ((float)(1 << (BITS - 1)))
#if BITS == 8
#define PLANE_OFFSET (17.f * OFFSET)  // OFFSET in both nibble planes, the high one weighted 16
#define PAIR_MASK 0x000f000fu         // a nibble a half
#else
#define PLANE_OFFSET OFFSET
#define PAIR_MASK ((1u << BITS) - 1) * 0x00010001u  // a code a half
#define STEPS (CODES / 4)             // mma k-steps per word
#endif

#if BF16
#define MAGIC 0x43004300u
#define OFFSET 128.0f
#else
#define MAGIC 0x64006400u
#define OFFSET 1024.0f
#endif

__device__ __forceinline__ u32 magic_pair(u32 w) {  // (w & PAIR_MASK) | MAGIC: the lowest code of each half
  u32 r;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(w), "n"(PAIR_MASK), "n"(MAGIC));
  return r;
}

__device__ __forceinline__ u32 magic_pair_flip(u32 w) {  // as magic_pair, nibbles' top bit flipped (0x6a:
  u32 r;                                                  // copy where b & !c, invert where b & c, else c)
  asm("lop3.b32 %0, %1, %2, %3, 0x6a;" : "=r"(r) : "r"(w), "n"(0x000f000f), "n"(MAGIC | 0x00080008u));
  return r;
}

#if SIGNED8  // int8 weight-only's signed codes c: c ^ 0x80 = c + 128, the symmetric zero 128
#define high_pair magic_pair_flip
#else
#define high_pair magic_pair
#endif

__device__ __forceinline__ u32 prmt(u32 a, u32 b, u32 sel) {
  u32 r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

#if BITS == 3
// Pair j of a unit: X(window s, low code a at bit p of it, high code b at bit 16 + p2). Pair 2q feeds k-step q's
// first A registers (k columns 2t, 2t + 1), pair 2q + 1 its second (2t + 8, 2t + 9).
#define PLAN3(X) X(0, 0, 0, 6, 2) X(3, 1, 0, 7, 2) X(6, 2, 0, 8, 2) X(9, 3, 0, 9, 2) X(12, 4, 0, 10, 2) \
  X(15, 5, 0, 11, 2) X(32, 12, 4, 17, 3) X(38, 13, 1, 18, 0) X(38, 14, 4, 19, 3) X(44, 15, 1, 20, 0) \
  X(44, 16, 4, 21, 3) X(64, 22, 2, 27, 1) X(68, 23, 1, 28, 0) X(68, 24, 4, 29, 3) X(74, 25, 1, 30, 0) \
  X(74, 26, 4, 31, 3)

template <int S>  // bits S .. S + 31 of a unit's 96 (zeros past them)
__device__ __forceinline__ u32 window(const u32* w) {
  if constexpr (S % 32 == 0) return w[S / 32];
  else if constexpr (S < 64) return __funnelshift_r(w[S / 32], w[S / 32 + 1], S % 32);
  else return w[2] >> (S - 64);
}

template <u32 MASK>  // (w & MASK) | MAGIC: a pair's two codes where they lie
__device__ __forceinline__ u32 magic_bits(u32 w) {
  u32 r;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(w), "n"(MASK), "n"(MAGIC));
  return r;
}

__device__ __forceinline__ u32 act_scaled(const u32* v, int i, int p) {  // activation i times 2^-p, 16 bits
  const u32 h = (v[i >> 1] >> (16 * (i & 1))) & 0xffff;
#if BF16
  const float f = __uint_as_float(h << 16);
#else
  const float f = half_f32((u16)h);
#endif
  return f32_act(f * (1.f / (float)(1 << p)));
}

__device__ __forceinline__ u32 act_pair(u32 lo, u32 hi) { return lo | hi << 16; }

#define B_PAIR3(s, a, p, b, p2) act_pair(act_scaled(v.v, a, p), act_scaled(v.v, b, p2)),
#define POW_PAIR3(s, a, p, b, p2) act_pair(f32_act((float)(1 << (p))), f32_act((float)(1 << (p2)))),
#define A_PAIR3(s, a, p, b, p2) magic_bits<(7u << (p)) | (7u << (16 + (p2)))>(window<(s)>(UNIT)),
#endif

struct alignas(CODES < 8 ? 2 * CODES : 16) Acts { u32 v[CODES / 2]; };  // one word's 16-bit activations
typedef Acts Frag;  // one word's B registers: the same size, the pairs permuted for the mma

// SMEM_X: a warp's fragments of activation row m lie at xs[(warp * rows + m) * XROW + ((c * U + j) * 4 + t) *
// XREGS]. The pad makes the row stride an odd multiple of the bytes 4 threads read (16 B for 2-bit codes),
// so the 8 rows of a fragment fall in different banks.
#define XPAD (XREGS <= 4 ? 4 * XREGS : 4)
#define XROW (KS / 2 + XPAD)  // u32 per activation row of a warp's slice

// U words of a row, read-only path, not kept in L1 (each weight is read once). Not volatile, so the
// compiler can issue a tile's loads together and ahead of their use. When !valid the words are left
// undefined: magic_pair masks any bits to a finite OFFSET + code, and the inputs they meet are zeros.
__device__ __forceinline__ void load_words(u32* dst, const u32* src, bool valid) {
#if BITS == 3  // a unit's 3 words (U == 1), 4-byte aligned
#pragma unroll
  for (int i = 0; i < 3; ++i)
    asm("{.reg .pred p; setp.ne.b32 p, %1, 0; @p ld.global.nc.L1::no_allocate.u32 %0, [%2];}"
        : "=r"(dst[i]) : "r"((int)valid), "l"(src + i));
#elif U == 4
  asm("{.reg .pred p; setp.ne.b32 p, %4, 0; @p ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%5];}"
      : "=r"(dst[0]), "=r"(dst[1]), "=r"(dst[2]), "=r"(dst[3]) : "r"((int)valid), "l"(src));
#elif U == 2
  asm("{.reg .pred p; setp.ne.b32 p, %2, 0; @p ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%3];}"
      : "=r"(dst[0]), "=r"(dst[1]) : "r"((int)valid), "l"(src));
#else
  asm("{.reg .pred p; setp.ne.b32 p, %1, 0; @p ld.global.nc.L1::no_allocate.u32 %0, [%2];}"
      : "=r"(dst[0]) : "r"((int)valid), "l"(src));
#endif
}

// ASYNC: a thread's words of one row and chunk (WB bytes) go straight to its own place in the warp's ring, from
// which it alone reads them back, so a cp.async.wait_group orders them without a barrier. Field f (chunk c, row
// half h: f = 2c + h) of a ring slot holds the 32 lanes' words side by side (bank-conflict free).
#define WB (U * UNIT_WORDS * 4)              // bytes of a thread's words of one row and chunk
#define SLOT_BYTES (2 * NCH * 32 * WB)       // one tile of a warp
#define RING_WORDS (ASYNC * SLOT_BYTES / 4)  // a warp's ring, in u32

__device__ __forceinline__ void copy_words(u32* dst, const u32* src, bool valid) {  // zero-filled when !valid
  const u32 to = (u32)__cvta_generic_to_shared(dst);
#if WB == 16
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(to), "l"(src), "r"(valid ? 16 : 0));
#elif WB == 12  // a 3-bit unit, 4-byte aligned
#pragma unroll
  for (int i = 0; i < 3; ++i)
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" :: "r"(to + 4 * i), "l"(src + i), "r"(valid ? 4 : 0));
#else
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" :: "r"(to), "l"(src), "n"(WB), "r"(valid ? WB : 0));
#endif
}

__device__ __forceinline__ void read_words(u32* dst, const u32* src) {  // a thread's words of one field
#if WB == 16
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#elif WB == 8
  *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(src);
#else
#pragma unroll
  for (int i = 0; i < WB / 4; ++i) dst[i] = src[i];
#endif
}

__device__ __forceinline__ u32* slot_at(u32* ring, int s) { return ring + s * (SLOT_BYTES / 4); }

__device__ __forceinline__ void async_commit() { asm volatile("cp.async.commit_group;"); }

template <int N>  // wait until at most N of this thread's copy groups are pending
__device__ __forceinline__ void async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }

// NF4/FP4: the table entry of byte i of w in this lane's copy (lut: its shared-space address), copies 128 bytes
// apart: a prmt and a lea for the address, then one ld.shared.
__device__ __forceinline__ u32 lut_pair(u32 lut, u32 w, int i) {
  u32 r;
  asm("ld.shared.u32 %0, [%1];" : "=r"(r) : "r"(lut + (prmt(w, 0, 0x4440 | i) << 7)));
  return r;
}

// NF4/FP4: the pair table in shared memory from the values of this thread's entries b = threadIdx.x + 32 WARPS r
// (entry b holds (table[b >> 4], table[b & 15]) in the activations' type, copy c of it at word 32 b + c). A thread
// writes an entry's copies four at a time, the first quad staggered by entry so that the 8 threads of a 16-byte
// store phase write 8 different bank quads.
#define LUT_ROUNDS ((256 + WARPS * 32 - 1) / (WARPS * 32))
__device__ __forceinline__ void write_pair_table(u32* smem, const float (&hi)[LUT_ROUNDS],
                                                 const float (&lo)[LUT_ROUNDS]) {
#pragma unroll
  for (int r = 0; r < LUT_ROUNDS; ++r) {
    const int b = threadIdx.x + r * WARPS * 32;
    if (b >= 256) break;
    const u32 pair = (u32)f32_act(hi[r]) | (u32)f32_act(lo[r]) << 16;
#pragma unroll
    for (int i = 0; i < 8; ++i)
      reinterpret_cast<uint4*>(smem)[8 * b + (b + i) % 8] = make_uint4(pair, pair, pair, pair);
  }
}

#if LUT4 && DQ
typedef signed char Scale;  // absmax_q, its dq_scale in TileData::z
#elif LUT4
typedef float Scale;        // absmax
#else
typedef u16 Scale;          // fp16 scale
#endif

struct TileData {
  u32 wa[NCH][U * UNIT_WORDS];  // words of output row g
  u32 wb[NCH][U * UNIT_WORDS];  // words of output row g + 8
  Scale s[NGRP][2];  // scales of rows g, g + 8 for each correction's group
  u16 z[NGRP][2];   // zeros, or (DQ) the absmax's second-level scales
};

// The qparam pointers: fp16 scales and zeros, or (LUT4) the absmax (fp32, or int8 with DQ's fp16 dq_scale).
struct Qparams {
  const Scale* scale;
  const u16* zero;  // zeros (HAS_ZERO) or dq_scale (DQ)
};

__device__ __forceinline__ float group_scale(const TileData& d, int q, int i, float dq_mean) {
#if LUT4 && DQ
  return (float)d.s[q][i] * half_f32(d.z[q][i]) + dq_mean;
#elif LUT4
  return d.s[q][i];
#else
  return half_f32(d.s[q][i]);
#endif
}

// Where a tile's words and qparams for this warp's K slice start. Chunk c starts c * CK / CODES words (CHUNK_WORDS)
// and, with groups no wider than the slice, c * CK / G groups after the slice's first (k0 is a multiple of KS, KS of
// G or G of KS): offsets known at compile time. Tiles past N read the last tile again (never written out).
// TILED: the words in tile order (formats/word_tiles.py, chunks of 4 U units of UNIT_WORDS words): a warp's words of
// one chunk and row half are 32 U units in a row.
#if TILED
#define CHUNK_WORDS (64 * U * UNIT_WORDS)
#else
#define CHUNK_WORDS (CK / CODES * UNIT_WORDS)
#endif

struct TileAt {
  const u32* wa;  // this thread's first words of output row g
  const u32* wb;  // of row g + 8
  long long qa, qb;  // the qparams of rows g and g + 8 for the slice's first group
};

__device__ __forceinline__ TileAt tile_at(const u32* qweight, int tile, int k0, int K, int N, int ngroups, int g,
                                          int t) {
  const int wpr = K / CODES * UNIT_WORDS;
  const long long ra = (long long)min(tile, N / OUT_TILE - 1) * OUT_TILE + g;
#if TILED
  const u32* wa = qweight + (ra - g) * wpr + (k0 / CK) * 64 * U * UNIT_WORDS + (4 * g + t) * U * UNIT_WORDS;
  const u32* wb = wa + 32 * U * UNIT_WORDS;
#else
  const u32* wa = qweight + ra * wpr + (k0 / CODES + U * t) * UNIT_WORDS;
  const u32* wb = wa + 8LL * wpr;
#endif
  const long long qa = ra * ngroups + k0 / G;
  return {wa, wb, qa, qa + 8LL * ngroups};
}

// A tile's words and qparams (tile_at). ASYNC: the words go to `slot` (this thread's place in a ring slot) and
// read_slot brings them to d before use.
__device__ __forceinline__ void load_tile(TileData& d, u32* slot, const u32* qweight, Qparams qp,
                                          int tile, int k0, int K, int N, int ngroups, int g, int t) {
  const TileAt at = tile_at(qweight, tile, k0, K, N, ngroups, g, t);
#pragma unroll
  for (int c = 0; c < NCH; ++c) {
    const bool ok = k0 + c * CK < K;
#if ASYNC
    copy_words(slot + (2 * c) * 8 * WB, at.wa + c * CHUNK_WORDS, ok);
    copy_words(slot + (2 * c + 1) * 8 * WB, at.wb + c * CHUNK_WORDS, ok);
#else
    load_words(d.wa[c], at.wa + c * CHUNK_WORDS, ok);
    load_words(d.wb[c], at.wb + c * CHUNK_WORDS, ok);
#endif
  }
#pragma unroll
  for (int q = 0; q < NGRP; ++q) {  // the qparams of the group that starts with chunk q * GCH
    const bool ok = k0 + q * GCH * CK < K;
    const int grp = G <= KS ? q * GCH * CK / G : 0;
    d.s[q][0] = ok ? qp.scale[at.qa + grp] : (Scale)0;
    d.s[q][1] = ok ? qp.scale[at.qb + grp] : (Scale)0;
#if HAS_ZERO
    d.z[q][0] = ok ? qp.zero[at.qa + grp] : (u16)0;
    d.z[q][1] = ok ? qp.zero[at.qb + grp] : (u16)0;
#elif DQ  // the second level's block of 256 absmax blocks
    d.z[q][0] = ok ? qp.zero[(at.qa + grp) >> 8] : (u16)0;
    d.z[q][1] = ok ? qp.zero[(at.qb + grp) >> 8] : (u16)0;
#endif
  }
}

// PREFETCH: the lines that load_tile reads of a tile for this warp's K slice, prefetched into L2 by the warp's lanes
// together: its words (one range in tile order, a range a row in row order), then the 16 rows' scales (lanes 0-15)
// and zeros (lanes 16-31).
__device__ __forceinline__ void prefetch_tile(const u32* qweight, Qparams qp, int tile, int k0, int K, int N,
                                              int ngroups, int lane) {
  if (k0 >= K) return;
  const int wpr = K / CODES * UNIT_WORDS;
  const long long row0 = (long long)min(tile, N / OUT_TILE - 1) * OUT_TILE;
  const int chunks = min(NCH, (K - k0) / CK);  // K is a multiple of CK
#if TILED
  const u32* words = qweight + row0 * wpr + (k0 / CK) * 64 * U * UNIT_WORDS;
  for (int j = lane; j < chunks * 2 * U * UNIT_WORDS; j += 32) prefetch_l2(words + 32 * j);  // 32 words a line
#else
  const int span = chunks * CHUNK_WORDS, lines = span / 32 + 1;  // a row's words, the lines they may touch
  const u32* words = qweight + row0 * wpr + k0 / CODES * UNIT_WORDS;
  for (int j = lane; j < 16 * lines; j += 32) prefetch_l2(words + (j % 16) * wpr + min(32 * (j / 16), span - 1));
#endif
  const long long q = (row0 + (lane & 15)) * ngroups + k0 / G;
#if HAS_ZERO
  prefetch_l2(lane < 16 ? (const void*)(qp.scale + q) : (const void*)(qp.zero + q));
#else
  if (lane < 16) prefetch_l2(qp.scale + q);
#endif
}

__device__ __forceinline__ void read_slot(TileData& d, const u32* slot) {  // ASYNC: a tile's words, ring -> d
#pragma unroll
  for (int c = 0; c < NCH; ++c) {
    read_words(d.wa[c], slot + (2 * c) * 8 * WB);
    read_words(d.wb[c], slot + (2 * c + 1) * 8 * WB);
  }
}

// Output n and activation row m of value v of a block's results (red[w][v]: tile i, lane, row fragment r, element e).
__device__ __forceinline__ void value_output(int v, int tile0, int& m, int& n) {
  const int e = v & 3, r = (v >> 2) % R8, vl = (v >> 2) / R8, ln = vl & 31, i = vl >> 5;
  n = (tile0 + i) * OUT_TILE + (ln >> 2) + 8 * (e >> 1);
  m = 8 * r + 2 * (ln & 3) + (e & 1);
}

// CLUSTER: the K blocks of outputs tile0.. (one cluster, blockIdx.y its rank) add up their sums through DSMEM. Each
// block puts its warps' sum of each value in red[0]; after the cluster barrier block r writes share r of the values,
// summed over the blocks in rank order (the same for any arrival order), and no block leaves before the others
// have read its shared memory.
__device__ __forceinline__ void add_up_cluster(float (*red)[NVALS], int tile0, int rows, int N, const float* bias,
                                               int has_bias, u16* y) {
  for (int v = threadIdx.x; v < NVALS; v += WARPS * 32)
    red[0][v] = warps_sum<WARPS>(red, v);  // this thread alone reads and writes value v
  cluster_sync();
  constexpr int share = (NVALS + CLUSTER - 1) / CLUSTER;
  const int end = min(NVALS, ((int)blockIdx.y + 1) * share);
  for (int v = blockIdx.y * share + threadIdx.x; v < end; v += WARPS * 32) {
    int m, n;
    value_output(v, tile0, m, n);
    if (m >= rows || n >= N) continue;
    float sum = 0.f;
#pragma unroll
    for (int b = 0; b < CLUSTER; ++b) sum += cluster_load(&red[0][v], b);
    if (has_bias) sum += bias[n];
    y[(long long)m * N + n] = f32_act(sum);
  }
  cluster_sync();
}

extern "C" __global__ void CLUSTER_DIMS LAUNCH_BOUNDS  // cuda_common.cuh: WARPS and MIN_BLOCKS
lowbit_mma(const u32* __restrict__ qweight, const Scale* __restrict__ scale, const u16* __restrict__ zero,
           const u16* __restrict__ x, const float* __restrict__ bias, u16* __restrict__ y,
           float* __restrict__ part, int* __restrict__ counters,
           int rows, int K, int N, int ngroups, int has_bias, int fixup,
           const float* __restrict__ table, const float* __restrict__ dq_mean) {
  // Dynamic shared memory: (LUT4) the pair table, red[WARPS][NVALS], (ASYNC) the warps' rings, then (SMEM_X) the
  // fragments.
  extern __shared__ __align__(16) u32 smem[];
  float* red_flat = reinterpret_cast<float*>(smem + LUT_BYTES / 4);
  float (*red)[NVALS] = reinterpret_cast<float (*)[NVALS]>(red_flat);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int k0 = (blockIdx.y * WARPS + warp) * KS;
  const Qparams qp = {scale, zero};
#if LAUNCH_NEXT == 2
  launch_dependents();  // PDL: the next launch may start its prefetches while this one streams its tiles
#endif
  // The block's first PREFETCH tiles into L2 (while the kernel ahead finishes, with PDL), then wait for that kernel.
#pragma unroll 1
  for (int i = 0; i < PREFETCH && i < TILES; ++i)
    prefetch_tile(qweight, qp, blockIdx.x * TILES + i, k0, K, N, ngroups, lane);
#if LUT4 && SMEM_X
  if (threadIdx.x == 0) prefetch_l2(table);  // its one line into L2 while the kernel ahead finishes
#endif
  TileData buf[DEPTH + 1];
#if PRELOAD && !ASYNC  // the first tiles' words into registers while the kernel ahead finishes
#pragma unroll
  for (int i = 0; i < EARLY_TILES && i < TILES; ++i)
    load_tile(buf[i], nullptr, qweight, qp, blockIdx.x * TILES + i, k0, K, N, ngroups, g, t);
#endif
  grid_dependency_wait();
#if LUT4
  // The values of this thread's pair-table entries, read now; with SMEM_X the table is written only after the
  // activations' loads are out, so that their latencies overlap (NF4 at one row 1.02-1.05x faster on the three
  // large shapes, kern23 run 2; the register shapes, which hold the activations in registers, write it at once).
  float lut_hi[LUT_ROUNDS], lut_lo[LUT_ROUNDS];
#pragma unroll
  for (int i = 0; i < LUT_ROUNDS; ++i) {
    const int b = min(threadIdx.x + i * WARPS * 32, 255);
    lut_hi[i] = table[b >> 4], lut_lo[i] = table[b & 15];
  }
#if !SMEM_X
  write_pair_table(smem, lut_hi, lut_lo);
#endif
  const u32 lut = (u32)__cvta_generic_to_shared(smem) + 4 * lane;  // this lane's copy, a shared-space address
  const float mean = DQ ? *dq_mean : 0.f;
#else
  const float mean = 0.f;
#endif

  // The tiles' words stream through a ring of DEPTH + 1 register buffers: DEPTH tiles in flight. With EARLY
  // the first tiles' loads (DEPTH of them, at least one) go out before the activations are read, so that the
  // two latencies overlap.
#if ASYNC  // each prologue tile a copy group, committed even past TILES so that tile i's group is always i
  u32* ring = reinterpret_cast<u32*>(red_flat + WARPS * NVALS) + warp * RING_WORDS + lane * (WB / 4);  // its slot 0
#pragma unroll
  for (int i = 0; i < DEPTH; ++i) {
    if (i < TILES) load_tile(buf[i], slot_at(ring, i), qweight, qp, blockIdx.x * TILES + i, k0, K, N, ngroups, g, t);
    async_commit();
  }
#else
  u32* ring = nullptr;
#pragma unroll
  for (int i = 0; i < (PRELOAD ? 0 : EARLY_TILES) && i < TILES; ++i)
    load_tile(buf[i], ring, qweight, qp, blockIdx.x * TILES + i, k0, K, N, ngroups, g, t);
#endif

  // The slice's activation fragments (B operands), and per chunk the sums of its inputs of activation rows
  // 8r + 2t and 8r + 2t + 1 from an mma with an all-ones A (the sums in the accumulators' layout).
#if SMEM_X
  u32* xs = reinterpret_cast<u32*>(red_flat + WARPS * (NVALS + RING_WORDS));
  u32* xrow[R8];  // this thread's fragments of row g + 8r (it reads back only what it wrote), or null past the rows
#pragma unroll
  for (int r = 0; r < R8; ++r) xrow[r] = g + 8 * r < rows ? xs + (warp * rows + g + 8 * r) * XROW + XREGS * t : nullptr;
#define X_AT(r, c, j) reinterpret_cast<Frag*>(xrow[r] + ((c) * U + (j)) * 4 * XREGS)
#define B_FRAG(r, c, j) (xrow[r] ? *X_AT(r, c, j) : Frag{})
#else
  Frag bx[R8][NCH][U];
#define B_FRAG(r, c, j) bx[r][c][j]
#endif
  float xsum[R8][NGRP][2];  // unused by LUT4 (no offset)
#if BITS == 3
  float xplain[R8][NGRP][2];  // the sums of the unscaled activations (3 bits' zero term)
  const u32 pow_pairs[16] = {PLAN3(POW_PAIR3)};  // (2^p, 2^p2) of each pair: A of the plain sums
#endif
  const u32 ones = BF16 ? 0x3f803f80u : 0x3c003c00u;
#pragma unroll
  for (int r = 0; r < R8; ++r) {
    const int m = g + 8 * r;
    float sums[4], plain[4];
#pragma unroll
    for (int c = 0; c < NCH; ++c) {
      const int kc = k0 + c * CK;
      if (c % GCH == 0) sums[0] = sums[1] = sums[2] = sums[3] = plain[0] = plain[1] = plain[2] = plain[3] = 0.f;
#pragma unroll
      for (int j = 0; j < U; ++j) {
        Acts v = {};
        const long long at = (long long)m * K + kc + CODES * (U * t + j);
        if (m < rows && kc < K) v = *reinterpret_cast<const Acts*>(x + at);
        Frag f;
        u32* b = f.v;
#if LUT4
        b[0] = v.v[0], b[1] = v.v[1], b[2] = v.v[2], b[3] = v.v[3];  // inputs (0, 1), (2, 3), (4, 5), (6, 7)
#elif BITS == 8
        b[0] = prmt(v.v[0], v.v[1], 0x5410);  // inputs 0, 2 (both planes, a0a1's pair)
        b[1] = prmt(v.v[0], v.v[1], 0x7632);  // inputs 1, 3 (a4a5's pair)
        mma16816(sums, ones, ones, ones, ones, b[0], b[1]);
#elif BITS == 3
        const u32 pairs[16] = {PLAN3(B_PAIR3)};  // each input scaled by 2^-p of its code's position
#pragma unroll
        for (int q = 0; q < STEPS; ++q) {
          b[2 * q] = pairs[2 * q], b[2 * q + 1] = pairs[2 * q + 1];
          mma16816(sums, ones, ones, ones, ones, b[2 * q], b[2 * q + 1]);
          mma16816(plain, pow_pairs[2 * q], pow_pairs[2 * q], pow_pairs[2 * q + 1], pow_pairs[2 * q + 1], b[2 * q],
                   b[2 * q + 1]);
        }
#else
#pragma unroll
        for (int q = 0; q < STEPS; ++q) {  // step q: inputs (2q, 2q + CODES / 2) and (2q + 1, 2q + 1 + CODES / 2)
          b[2 * q] = prmt(v.v[q], v.v[q + CODES / 4], 0x5410);      // a0a1's pair
          b[2 * q + 1] = prmt(v.v[q], v.v[q + CODES / 4], 0x7632);  // a4a5's pair
          mma16816(sums, ones, ones, ones, ones, b[2 * q], b[2 * q + 1]);
        }
#endif
#if SMEM_X
        if (xrow[r]) *X_AT(r, c, j) = f;
#else
        bx[r][c][j] = f;
#endif
      }
      xsum[r][c / GCH][0] = sums[0];  // (output row g, activation row 8r + 2t): alike for every output row
      xsum[r][c / GCH][1] = sums[1];
#if BITS == 3
      xplain[r][c / GCH][0] = plain[0];
      xplain[r][c / GCH][1] = plain[1];
#endif
    }
  }
  const int tile0 = blockIdx.x * TILES;
#pragma unroll
  for (int i = EARLY_TILES; i < DEPTH && i < TILES; ++i)
    load_tile(buf[i], ring, qweight, qp, tile0 + i, k0, K, N, ngroups, g, t);
#if LUT4
#if SMEM_X  // after the activations' loads, which went to shared memory
  write_pair_table(smem, lut_hi, lut_lo);
#endif
  __syncthreads();  // the pair table is written
#endif
#pragma unroll
  for (int i = 0; i < TILES; ++i) {
    const int ahead = (i + DEPTH) % (DEPTH + 1);
    if (i + DEPTH < TILES && i + DEPTH >= EARLY_TILES)
      load_tile(buf[ahead], ASYNC ? slot_at(ring, ahead) : ring, qweight, qp, tile0 + i + DEPTH, k0, K, N, ngroups,
                g, t);
#pragma unroll
    for (int a = i == 0 ? max(PREFETCH, DEPTH + 1) : DEPTH + L2_AHEAD; a <= DEPTH + L2_AHEAD; ++a)  // not yet asked for
      if (L2_AHEAD && i + a < TILES) prefetch_tile(qweight, qp, tile0 + i + a, k0, K, N, ngroups, lane);
#if ASYNC
    async_commit();
    async_wait<DEPTH>();  // tile i's words are in its slot
    read_slot(buf[i % (DEPTH + 1)], slot_at(ring, i % (DEPTH + 1)));
#endif
    const TileData& d = buf[i % (DEPTH + 1)];
    float out[R8][4];
#pragma unroll
    for (int r = 0; r < R8; ++r)
#pragma unroll
      for (int e = 0; e < 4; ++e) out[r][e] = 0.f;
    float acc[R8][4], acc_hi[R8][4];  // acc_hi: 8-bit codes' high nibbles
#pragma unroll
    for (int c = 0; c < NCH; ++c) {
      if (c % GCH == 0) {
#pragma unroll
        for (int r = 0; r < R8; ++r)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[r][e] = acc_hi[r][e] = 0.f;
      }
#pragma unroll
      for (int j = 0; j < U; ++j) {
        const u32 wa = d.wa[c][j * UNIT_WORDS], wb = d.wb[c][j * UNIT_WORDS];
        Frag bf[R8];
#pragma unroll
        for (int r = 0; r < R8; ++r) bf[r] = B_FRAG(r, c, j);
#if LUT4
#pragma unroll
        for (int q = 0; q < 2; ++q) {  // bytes 2q (a0, a1) and 2q + 1 (a2, a3), zero-extended by prmt
          const u32 a0 = lut_pair(lut, wa, 2 * q), a1 = lut_pair(lut, wb, 2 * q);
          const u32 a2 = lut_pair(lut, wa, 2 * q + 1), a3 = lut_pair(lut, wb, 2 * q + 1);
#pragma unroll
          for (int r = 0; r < R8; ++r) mma16816(acc[r], a0, a1, a2, a3, bf[r].v[2 * q], bf[r].v[2 * q + 1]);
        }
#elif BITS == 3
#define UNIT (&d.wa[c][j * 3])
        const u32 pa[16] = {PLAN3(A_PAIR3)};  // row g's pairs
#undef UNIT
#define UNIT (&d.wb[c][j * 3])
        const u32 pb[16] = {PLAN3(A_PAIR3)};  // row g + 8's
#undef UNIT
#pragma unroll
        for (int q = 0; q < STEPS; ++q)
#pragma unroll
          for (int r = 0; r < R8; ++r)
            mma16816(acc[r], pa[2 * q], pb[2 * q], pa[2 * q + 1], pb[2 * q + 1], bf[r].v[2 * q], bf[r].v[2 * q + 1]);
#elif BITS != 8
#pragma unroll
        for (int q = 0; q < STEPS; ++q) {
          const u32 a0 = magic_pair(wa >> (2 * q * BITS));        // row g, inputs 2q, 2q + CODES / 2
          const u32 a1 = magic_pair(wb >> (2 * q * BITS));        // row g + 8
          const u32 a2 = magic_pair(wa >> ((2 * q + 1) * BITS));  // row g, inputs 2q + 1, 2q + 1 + CODES / 2
          const u32 a3 = magic_pair(wb >> ((2 * q + 1) * BITS));  // row g + 8
#pragma unroll
          for (int r = 0; r < R8; ++r) mma16816(acc[r], a0, a1, a2, a3, bf[r].v[2 * q], bf[r].v[2 * q + 1]);
        }
#else
        const u32 l0 = magic_pair(wa), l1 = magic_pair(wb);               // low nibbles of inputs 0, 2
        const u32 l2 = magic_pair(wa >> 8), l3 = magic_pair(wb >> 8);     // of inputs 1, 3
        const u32 h0 = high_pair(wa >> 4), h1 = high_pair(wb >> 4);    // high nibbles of inputs 0, 2
        const u32 h2 = high_pair(wa >> 12), h3 = high_pair(wb >> 12);  // of inputs 1, 3
#pragma unroll
        for (int r = 0; r < R8; ++r) {
          mma16816(acc[r], l0, l1, l2, l3, bf[r].v[0], bf[r].v[1]);
          mma16816(acc_hi[r], h0, h1, h2, h3, bf[r].v[0], bf[r].v[1]);
        }
#endif
      }
      if (c % GCH != GCH - 1) continue;  // the group goes on in the next chunk
      const float s0 = group_scale(d, c / GCH, 0, mean), s1 = group_scale(d, c / GCH, 1, mean);
#if LUT4
      const float o0 = 0.f, o1 = 0.f;  // no offset: the products are the weights' own
#elif BITS == 3  // the zero alone: the offset meets the scaled sums below
      const float o0 = HAS_ZERO ? half_f32(d.z[c / GCH][0]) : SYMMETRIC_ZERO;
      const float o1 = HAS_ZERO ? half_f32(d.z[c / GCH][1]) : SYMMETRIC_ZERO;
#elif HAS_ZERO
      const float o0 = PLANE_OFFSET + half_f32(d.z[c / GCH][0]), o1 = PLANE_OFFSET + half_f32(d.z[c / GCH][1]);
#else
      const float o0 = PLANE_OFFSET + SYMMETRIC_ZERO, o1 = o0;
#endif
#pragma unroll
      for (int r = 0; r < R8; ++r) {  // acc: (row g, act 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float sum = BITS == 8 ? acc[r][e] + 16.f * acc_hi[r][e] : acc[r][e];
#if BITS == 3
          const float net = sum - OFFSET * xsum[r][c / GCH][e & 1] - (e < 2 ? o0 : o1) * xplain[r][c / GCH][e & 1];
#else
          const float net = LUT4 ? sum : sum - (e < 2 ? o0 : o1) * xsum[r][c / GCH][e & 1];
#endif
          out[r][e] += (e < 2 ? s0 : s1) * net;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R8; ++r)  // this warp's share of tile i, value ((i * 32 + lane) * R8 + r) * 4 + e
#pragma unroll
      for (int e = 0; e < 4; ++e) red[warp][((i * 32 + lane) * R8 + r) * 4 + e] = out[r][e];
  }

#if LAUNCH_NEXT == 1
  launch_dependents();  // PDL: the next launch may start its prefetches now, not only as this one's blocks exit
#endif

  // Sum the warps' K slices in shared memory.
  __syncthreads();
#if CLUSTER > 1
  add_up_cluster(red, tile0, rows, N, bias, has_bias, y);
#else
  const bool split = gridDim.y > 1;
  const long long total = (long long)rows * N;
  for (int v = threadIdx.x; v < NVALS; v += WARPS * 32) {
    float sum = warps_sum<WARPS>(red, v);
    int m, n;
    value_output(v, tile0, m, n);
    if (m >= rows || n >= N) continue;
    if (split) {
      part[blockIdx.y * total + (long long)m * N + n] = sum;
    } else {
      if (has_bias) sum += bias[n];
      y[(long long)m * N + n] = f32_act(sum);
    }
  }
  if (!split || !fixup) return;  // without fix-up the host adds the partials
  add_up_partials<WARPS * 32>(part, counters, blockIdx.x, gridDim.y, rows, N, tile0 * OUT_TILE, TILES * OUT_TILE,
                              nullptr, bias, has_bias, y);
#endif
}
