// AQLM (formats.aqlm; Egiazarian et al., 2024) times up to 8 activation rows on tensor cores:
//
//     y[m, o] = scales[o] * sum_j sum_c dot(x[m, 8j:8j+8], codebooks[c, codes[o, j, c]])  (+ bias[o])
//
// Codebooks of 8 bits (1x8, 2x8): M (1 or 2) codebooks of up to 256 codewords of 8 inputs. Each block copies the
// codebooks into shared memory, 8 copies of each codeword 16 bytes apart (copy L of codeword e at
// ((c * 256 + e) * 8 + L) * 16 bytes), so the 8 lanes of a 16-byte load phase (lane % 8 = L) read 8 different bank
// quads whatever their codes: no conflicts.
//
// One codebook of 16 bits (1x16, BOOK16): 65536 codewords (1 MiB in fp16) do not fit in a block's shared memory.
// BUCKETS 1 reads each codeword from global memory (16 bytes, from L2 or L1), which an H100 serves at about 125 G
// random codewords a second, slower than bf16 weights stream. BUCKETS B > 1 (lowbit_aqlm_split) splits the codes'
// range in B: each block holds one range's codewords in shared memory (B = 5: 13108 codewords, 205 KB) and adds up
// only the codes in it (the others count zero), so every code is read by B blocks (from L2 after the first) but
// looked up in shared memory once; the B partial sums of an output meet in fp32 (the last block adds them up).
//
// y^T = W x^T with W as mma.sync's A operand (m16n8k16: 16 outputs x 16 inputs) and the activations as its B
// operand (8 rows, "swap AB", as cuda_mma.cu). k is only a summation index, so thread (g, t) of a warp
// (g = lane / 4, t = lane % 4) feeds whole codewords: for the group j = 8t + p of a 32-group K slice it sums its
// codebooks' codewords of outputs g and g + 8 (one 16-byte load a codebook and row, a packed add in the
// activations' type per input pair), which are exactly the A registers of two k-steps (inputs 0-3, then 4-7),
// and the activations of that group, read as they lie, are their B registers. Per weight: 2 bytes of codes per
// 8 inputs from memory, 2 bytes of codebook per codebook from shared memory (or L2), fp32 accumulation.
//
// A block of WARPS warps covers TILES tiles of 16 outputs and all of K: warp w takes 256-input slices w,
// w + WARPS, ... (their activations and codes in registers), the warps' sums meet in shared memory, and the block
// scales and writes them (lowbit_aqlm_split: its blocks stay resident, one a multiprocessor, and move on by the
// grid's width, each warp requesting its next codes ahead). Compile-time settings (-D): BF16 (activations bf16,
// else fp16), M, BOOK16, BUCKETS, WARPS, TILES, EARLY (each warp's first slice requested before the codebooks are
// copied), PDL (programmatic dependent launch, cuda_common.cuh: nothing is read before the kernel ahead has
// finished, and the next launch may start once the warps' sums are done; kern20; on where the device allows, kern21),
// and optionally MIN_BLOCKS (cuda_common.cuh's LAUNCH_BOUNDS; 1x16 launches of one wave from L2 ask for 1, kern31).
//
// The types, conversions and mma.sync wrapper it shares with the other kernels are in cuda_common.cuh.

#define SLICE_GROUPS 32           // groups of 8 inputs a warp slice: 8 for each of a quad's 4 threads
#define SLICE (SLICE_GROUPS * 8)  // inputs a warp slice
#define COPIES 8                  // copies of each codeword, one per lane of a 16-byte load phase
#define NVALS (TILES * 32 * 4)    // a warp's fp32 results per block
#ifndef EARLY                     // load the warp's first slice before the codebooks are copied
#define EARLY 0
#endif
#ifndef BOOK16                    // one codebook of up to 65536 codewords (codes of 16 bits), M = 1
#define BOOK16 0
#endif
#ifndef BUCKETS                   // BOOK16: ranges the codes are split in, one a block (1: codewords from global)
#define BUCKETS 1
#endif
#define GROUP_BYTES (BOOK16 ? 2 : M)                      // code bytes a group of 8 inputs
#define SPLIT_BOOK16 (BOOK16 && BUCKETS > 1)
#define BUCKET_WORDS ((65536 + BUCKETS - 1) / BUCKETS)    // SPLIT_BOOK16: codewords a block holds
#define BOOK_SMEM (SPLIT_BOOK16 ? BUCKET_WORDS : BOOK16 ? 0 : M * 256 * COPIES)  // 16-byte words in shared memory

#if BF16
#define ONES 0x3f803f80u
#else
#define ONES 0x3c003c00u
#endif

__device__ __forceinline__ u32 add_pair(u32 a, u32 b) {  // a + b, two 16-bit values of the activations' type
  u32 r;
#if BF16
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(ONES), "r"(b));
#else
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(ONES), "r"(b));
#endif
  return r;
}

// A row's codes of this thread's 8 groups in a slice (8 GROUP_BYTES bytes), read-only path, not kept in L1.
struct Codes { u32 w[2 * GROUP_BYTES]; };

__device__ __forceinline__ Codes load_codes(const unsigned char* p) {
  Codes c;
#if GROUP_BYTES == 2
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(c.w[0]), "=r"(c.w[1]), "=r"(c.w[2]), "=r"(c.w[3]) : "l"(p));
#else
  asm("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(c.w[0]), "=r"(c.w[1]) : "l"(p));
#endif
  return c;
}

__device__ __forceinline__ u32 half2_act(u32 h) {  // two fp16 -> two of the activations' type, round to nearest
#if BF16
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(half_f32((u16)(h >> 16))), "f"(half_f32((u16)(h & 0xffff))));
  return r;
#else
  return h;
#endif
}

__device__ __forceinline__ uint4 codeword_act(uint4 h) {  // a codeword's 8 fp16 values in the activations' type
  return make_uint4(half2_act(h.x), half2_act(h.y), half2_act(h.z), half2_act(h.w));
}

// Where a thread reads codewords.
struct Book {
  u32 smem;             // shared-space address: this lane's copy of codeword 0 of codebook 0 (8-bit codes), or the
                        // block's first codeword (SPLIT_BOOK16)
  u32 first;            // SPLIT_BOOK16: the code of the block's first codeword
  const uint4* global;  // BOOK16, BUCKETS 1: the codebook in global memory
};

// The 8 weights (4 pairs) of one output row for group p of this thread: its codebooks' codewords summed
// (SPLIT_BOOK16: zero for a code outside the block's range).
__device__ __forceinline__ uint4 codeword_sum(const Codes& c, int p, const Book& b) {
#if BOOK16
  const u32 code = (c.w[p >> 1] >> (16 * (p & 1))) & 0xffff;
  uint4 v;
#if SPLIT_BOOK16
  const u32 rel = code - b.first;  // codes below the range wrap past it
  v = make_uint4(0, 0, 0, 0);
  if (rel < BUCKET_WORDS)
    asm("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(b.smem + rel * 16));
  return v;
#else
  asm("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(b.global + code));
  return codeword_act(v);
#endif
#else
  uint4 s;
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const int byte = p * M + m;
    const u32 code = (c.w[byte >> 2] >> (8 * (byte & 3))) & 0xff;
    uint4 v;
    asm("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "r"(b.smem + ((m * 256 + code) * COPIES) * 16));
    if (m == 0) {
      s = v;
    } else {
      s.x = add_pair(s.x, v.x), s.y = add_pair(s.y, v.y), s.z = add_pair(s.z, v.z), s.w = add_pair(s.w, v.w);
    }
  }
  return s;
#endif
}

// Slice s's inputs for this thread: the activations of row g for groups j0 .. j0 + 7 (the B registers of 16
// k-steps) and the codes of outputs g and g + 8 of each tile (tiles past N read the last one again).
struct Slice {
  uint4 xs[8];
  Codes ca[TILES], cb[TILES];
};

// The activations of row g for groups j0 .. j0 + 7 of slice s (zero for rows past `rows`).
__device__ __forceinline__ void load_acts(uint4 (&xs)[8], const u16* x, int s, int rows, int K, int g, int t) {
  const int j0 = s * SLICE_GROUPS + 8 * t;
#pragma unroll
  for (int p = 0; p < 8; ++p)
    xs[p] = g < rows ? reinterpret_cast<const uint4*>(x + (long long)g * K)[j0 + p] : make_uint4(0, 0, 0, 0);
}

// The codes of outputs g and g + 8 of each tile from tile0 in slice s.
__device__ __forceinline__ void load_tile_codes(Codes (&ca)[TILES], Codes (&cb)[TILES], const unsigned char* codes,
                                                int s, int K, int N, int tile0, int g, int t) {
  const int groups = K / 8, j0 = s * SLICE_GROUPS + 8 * t;
#pragma unroll
  for (int i = 0; i < TILES; ++i) {
    const long long o = min((tile0 + i) * 16 + g, N - 16 + g);
    ca[i] = load_codes(codes + (o * groups + j0) * GROUP_BYTES);
    cb[i] = load_codes(codes + ((o + 8) * groups + j0) * GROUP_BYTES);
  }
}

__device__ __forceinline__ void load_slice(Slice& d, const unsigned char* codes, const u16* x, int s, int rows,
                                           int K, int N, int tile0, int g, int t) {
  load_acts(d.xs, x, s, rows, K, g, t);
  load_tile_codes(d.ca, d.cb, codes, s, K, N, tile0, g, t);
}

// A slice's products of this thread, added to acc.
__device__ __forceinline__ void accumulate(float (&acc)[TILES][4], const Slice& d, const Book& b) {
#pragma unroll
  for (int i = 0; i < TILES; ++i) {
#pragma unroll
    for (int p = 0; p < 8; ++p) {
      const uint4 wa = codeword_sum(d.ca[i], p, b), wb = codeword_sum(d.cb[i], p, b);
      mma16816(acc[i], wa.x, wb.x, wa.y, wb.y, d.xs[p].x, d.xs[p].y);  // inputs 0-3 of the group
      mma16816(acc[i], wa.z, wb.z, wa.w, wb.w, d.xs[p].z, d.xs[p].w);  // inputs 4-7
    }
  }
}

// The warps' sums of this thread's values into red; value v of a warp is ((i * 32 + lane) * 4 + e): (output g, act
// 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1) of tile i.
__device__ __forceinline__ void store_sums(float (*red)[NVALS], const float (&acc)[TILES][4], int warp, int lane) {
#pragma unroll
  for (int i = 0; i < TILES; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) red[warp][(i * 32 + lane) * 4 + e] = acc[i][e];
}

// Value v of the block's tiles from tile0: its output n and activation row m.
__device__ __forceinline__ void value_place(int v, int tile0, int& m, int& n) {
  const int e = v & 3, ln = (v >> 2) & 31, i = v >> 7;
  n = (tile0 + i) * 16 + (ln >> 2) + 8 * (e >> 1);
  m = 2 * (ln & 3) + (e & 1);
}

#if !SPLIT_BOOK16
extern "C" __global__ void LAUNCH_BOUNDS
lowbit_aqlm(const unsigned char* __restrict__ codes, const u16* __restrict__ codebooks, const u16* __restrict__ scales,
            const u16* __restrict__ x, const float* __restrict__ bias, u16* __restrict__ y,
            int rows, int K, int N, int entries, int has_bias) {
  extern __shared__ __align__(16) uint4 books_smem[];  // BOOK_SMEM codewords, then red[WARPS][NVALS]
  float (*red)[NVALS] = reinterpret_cast<float (*)[NVALS]>(books_smem + BOOK_SMEM);
  const uint4* book = reinterpret_cast<const uint4*>(codebooks);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int slices = K / SLICE, tile0 = blockIdx.x * TILES;
  grid_dependency_wait();  // PDL: the kernel ahead has finished (cuda_common.cuh)
#if EARLY  // the warp's first slice is requested before the codebook copy: the two latencies overlap
  Slice d;
  if (warp < slices) load_slice(d, codes, x, warp, rows, K, N, tile0, g, t);
#endif

#if BOOK16
  const Book b = {0, 0, book};
#else
  // The codebooks in the activations' type, 8 copies; a thread's 8 stores staggered over the bank quads.
  for (int e = threadIdx.x; e < M * 256; e += WARPS * 32) {
    uint4 v = make_uint4(0, 0, 0, 0);
    if (e % 256 < entries) v = codeword_act(book[(e / 256) * entries + e % 256]);
#pragma unroll
    for (int i = 0; i < COPIES; ++i) books_smem[e * COPIES + (e + i) % COPIES] = v;
  }
  const Book b = {(u32)__cvta_generic_to_shared(books_smem) + 16 * (lane % COPIES), 0, book};
  __syncthreads();
#endif

  float acc[TILES][4];
#pragma unroll
  for (int i = 0; i < TILES; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  for (int s = warp; s < slices; s += WARPS) {
#if EARLY
    if (s != warp) load_slice(d, codes, x, s, rows, K, N, tile0, g, t);
#else
    Slice d;
    load_slice(d, codes, x, s, rows, K, N, tile0, g, t);
#endif
    accumulate(acc, d, b);
  }
  launch_dependents();  // PDL: the next launch may start
  store_sums(red, acc, warp, lane);
  __syncthreads();

  for (int v = threadIdx.x; v < NVALS; v += WARPS * 32) {
    float sum = warps_sum<WARPS>(red, v);
    int m, n;
    value_place(v, tile0, m, n);
    if (m >= rows || n >= N) continue;
    sum *= half_f32(scales[n]);
    if (has_bias) sum += bias[n];
    y[(long long)m * N + n] = f32_act(sum);
  }
}

#else
#define ARRIVALS 256  // tile groups a block arrives at in one round of add_up_ranges

// The fix-up of lowbit_aqlm_split, once a block has written the partials of all its tile groups (one fence a block,
// not one a group): it arrives at each group's counter, then its threads add up the outputs of every group it
// arrived last at (add_up_partials' scheme, its groups at once).
__device__ __forceinline__ void add_up_ranges(const float* part, int* counters, int rows, int N, const u16* scales,
                                              const float* bias, int has_bias, u16* y) {
  __shared__ int last[ARRIVALS];
  const int member = blockIdx.x / BUCKETS, members = gridDim.x / BUCKETS, span = TILES * 16, per = rows * span;
  const int mine = ((N / 16 + TILES - 1) / TILES - member + members - 1) / members;  // member, member + members, ..
  __threadfence();
  __syncthreads();
  for (int c0 = 0; c0 < mine; c0 += ARRIVALS) {
    const int round = min(ARRIVALS, mine - c0);
    const auto group = [&](int c) { return member + (c0 + c) * members; };  // the block's c-th group of the round
    for (int c = threadIdx.x; c < round; c += WARPS * 32)
      last[c] = atomicAdd(&counters[group(c)], 1) == BUCKETS - 1;
    __syncthreads();
    __threadfence();
    for (int v = threadIdx.x; v < round * per; v += WARPS * 32) {
      const int c = v / per, n = group(c) * span + v % span;
      if (last[c] && n < N) sum_partial(part, BUCKETS, (long long)rows * N, v % per / span, n, N, scales, bias,
                                        has_bias, y);
    }
    for (int c = threadIdx.x; c < round; c += WARPS * 32)
      if (last[c]) counters[group(c)] = 0;  // ready for the next launch
    __syncthreads();  // last is written again
  }
}

// BOOK16 with the codes' range split in BUCKETS (above). Block k takes range k % BUCKETS and the tile groups
// k / BUCKETS, k / BUCKETS + gridDim.x / BUCKETS, ...; each warp requests the codes of its next slice (of this
// group or the next) before it works through the current one. The ranges' fp32 partials go to part (BUCKETS, rows,
// N); the last block of a tile group to finish adds them up (add_up_ranges, after all its groups), unless fixup is
// 0 (the host adds them).
extern "C" __global__ void LAUNCH_BOUNDS
lowbit_aqlm_split(const unsigned char* __restrict__ codes, const u16* __restrict__ codebooks,
                  const u16* __restrict__ scales, const u16* __restrict__ x, const float* __restrict__ bias,
                  u16* __restrict__ y, float* __restrict__ part, int* __restrict__ counters,
                  int rows, int K, int N, int entries, int has_bias, int fixup) {
  extern __shared__ __align__(16) uint4 books_smem[];  // BUCKET_WORDS codewords, then red[WARPS][NVALS]
  float (*red)[NVALS] = reinterpret_cast<float (*)[NVALS]>(books_smem + BOOK_SMEM);
  const uint4* book = reinterpret_cast<const uint4*>(codebooks);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int slices = K / SLICE, n_tiles = N / 16, step = gridDim.x / BUCKETS * TILES;
  const int bucket = blockIdx.x % BUCKETS;
  int tile0 = blockIdx.x / BUCKETS * TILES;
  grid_dependency_wait();  // PDL: the kernel ahead has finished (cuda_common.cuh)
  Slice d;  // the warp's current slice, requested before the codebook copy
  if (warp < slices && tile0 < n_tiles) load_slice(d, codes, x, warp, rows, K, N, tile0, g, t);

  // The range's codewords: every copy requested at once (cp.async), then each thread converts those it copied.
  const int first = bucket * BUCKET_WORDS;
  const Book b = {(u32)__cvta_generic_to_shared(books_smem), (u32)first, book};
  for (int e = threadIdx.x; e < BUCKET_WORDS; e += WARPS * 32) {
    if (first + e < entries)
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(b.smem + e * 16), "l"(book + first + e));
    else
      books_smem[e] = make_uint4(0, 0, 0, 0);
  }
  asm volatile("cp.async.wait_all;" ::: "memory");
#if BF16
  for (int e = threadIdx.x; e < BUCKET_WORDS; e += WARPS * 32) books_smem[e] = codeword_act(books_smem[e]);
#endif
  __syncthreads();

  const long long total = (long long)rows * N;
  for (; tile0 < n_tiles; tile0 += step) {
    float acc[TILES][4];
#pragma unroll
    for (int i = 0; i < TILES; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    for (int s = warp; s < slices; s += WARPS) {
      // The next slice's codes requested before this one is worked through, its activations after.
      const bool same = s + WARPS < slices;  // the next slice is of this tile group, else the first of the next
      const int next_s = same ? s + WARPS : warp, next_tile0 = same ? tile0 : tile0 + step;
      Codes na[TILES], nb[TILES];
      if (next_tile0 < n_tiles) load_tile_codes(na, nb, codes, next_s, K, N, next_tile0, g, t);
      accumulate(acc, d, b);
#pragma unroll
      for (int i = 0; i < TILES; ++i) d.ca[i] = na[i], d.cb[i] = nb[i];
      if (slices > WARPS && next_tile0 < n_tiles) load_acts(d.xs, x, next_s, rows, K, g, t);  // else kept
    }
    store_sums(red, acc, warp, lane);
    __syncthreads();
    for (int v = threadIdx.x; v < NVALS; v += WARPS * 32) {
      const float sum = warps_sum<WARPS>(red, v);
      int m, n;
      value_place(v, tile0, m, n);
      if (m < rows && n < N) part[bucket * total + (long long)m * N + n] = sum;
    }
    __syncthreads();  // red is written again for the next tile group
  }
  launch_dependents();  // PDL: the next launch may start
  if (fixup) add_up_ranges(part, counters, rows, N, scales, bias, has_bias, y);
}

#endif
