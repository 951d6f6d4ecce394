// AQLM with 8-bit codebooks (formats.aqlm; Egiazarian et al., 2024) times up to 8 activation rows on tensor cores:
//
//     y[m, o] = scales[o] * sum_j sum_c dot(x[m, 8j:8j+8], codebooks[c, codes[o, j, c]])  (+ bias[o])
//
// M (1 or 2) codebooks of up to 256 codewords of 8 inputs. Each block copies the codebooks into shared memory,
// 8 copies of each codeword 16 bytes apart (copy L of codeword e at ((c * 256 + e) * 8 + L) * 16 bytes), so the
// 8 lanes of a 16-byte load phase (lane % 8 = L) read 8 different bank quads whatever their codes: no conflicts.
//
// y^T = W x^T with W as mma.sync's A operand (m16n8k16: 16 outputs x 16 inputs) and the activations as its B
// operand (8 rows, "swap AB", as cuda_mma.cu). k is only a summation index, so thread (g, t) of a warp
// (g = lane / 4, t = lane % 4) feeds whole codewords: for the group j = 8t + p of a 32-group K slice it sums its
// codebooks' codewords of outputs g and g + 8 (one 16-byte shared load a codebook and row, a packed add in the
// activations' type per input pair), which are exactly the A registers of two k-steps (inputs 0-3, then 4-7),
// and the activations of that group, read as they lie, are their B registers. Per weight: 2 bytes of codes per
// 8 inputs from memory, 2 bytes of codebook per codebook from shared memory, fp32 accumulation.
//
// A block of WARPS warps covers TILES tiles of 16 outputs and all of K: warp w takes 256-input slices w,
// w + WARPS, ... (their activations and codes in registers), the warps' sums meet in shared memory, and the block
// scales and writes them. Compile-time settings (-D): BF16 (activations bf16, else fp16), M, WARPS, TILES, EARLY
// (each warp's first slice requested before the codebooks are copied).
//
// The types, conversions and mma.sync wrapper it shares with the other kernels are in cuda_common.cuh.

#define SLICE_GROUPS 32           // groups of 8 inputs a warp slice: 8 for each of a quad's 4 threads
#define SLICE (SLICE_GROUPS * 8)  // inputs a warp slice
#define COPIES 8                  // copies of each codeword, one per lane of a 16-byte load phase
#define NVALS (TILES * 32 * 4)    // a warp's fp32 results per block
#ifndef EARLY                     // load the warp's first slice before the codebooks are copied
#define EARLY 0
#endif

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

// A row's codes of this thread's 8 groups in a slice (8 M bytes), read-only path, not kept in L1.
struct Codes { u32 w[2 * M]; };

__device__ __forceinline__ Codes load_codes(const unsigned char* p) {
  Codes c;
#if M == 2
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(c.w[0]), "=r"(c.w[1]), "=r"(c.w[2]), "=r"(c.w[3]) : "l"(p));
#else
  asm("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(c.w[0]), "=r"(c.w[1]) : "l"(p));
#endif
  return c;
}

// The 8 weights (4 pairs) of one output row for group p of this thread: its codebooks' codewords summed.
// books: this lane's copy of codeword 0 of codebook 0, a shared-space address.
__device__ __forceinline__ uint4 codeword_sum(const Codes& c, int p, u32 books) {
  uint4 s;
#pragma unroll
  for (int b = 0; b < M; ++b) {
    const int byte = p * M + b;
    const u32 code = (c.w[byte >> 2] >> (8 * (byte & 3))) & 0xff;
    uint4 v;
    asm("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "r"(books + ((b * 256 + code) * COPIES) * 16));
    if (b == 0) {
      s = v;
    } else {
      s.x = add_pair(s.x, v.x), s.y = add_pair(s.y, v.y), s.z = add_pair(s.z, v.z), s.w = add_pair(s.w, v.w);
    }
  }
  return s;
}

// Slice s's inputs for this thread: the activations of row g for groups j0 .. j0 + 7 (the B registers of 16
// k-steps) and the codes of outputs g and g + 8 of each tile (tiles past N read the last one again).
struct Slice {
  uint4 xs[8];
  Codes ca[TILES], cb[TILES];
};

__device__ __forceinline__ void load_slice(Slice& d, const unsigned char* codes, const u16* x, int s, int rows,
                                           int K, int N, int tile0, int g, int t) {
  const int groups = K / 8, j0 = s * SLICE_GROUPS + 8 * t;
#pragma unroll
  for (int p = 0; p < 8; ++p)
    d.xs[p] = g < rows ? reinterpret_cast<const uint4*>(x + (long long)g * K)[j0 + p] : make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int i = 0; i < TILES; ++i) {
    const long long o = min((tile0 + i) * 16 + g, N - 16 + g);
    d.ca[i] = load_codes(codes + (o * groups + j0) * M);
    d.cb[i] = load_codes(codes + ((o + 8) * groups + j0) * M);
  }
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
lowbit_aqlm(const unsigned char* __restrict__ codes, const u16* __restrict__ codebooks, const u16* __restrict__ scales,
            const u16* __restrict__ x, const float* __restrict__ bias, u16* __restrict__ y,
            int rows, int K, int N, int entries, int has_bias) {
  extern __shared__ __align__(16) uint4 books_smem[];  // M * 256 * COPIES codewords, then red[WARPS][NVALS]
  float (*red)[NVALS] = reinterpret_cast<float (*)[NVALS]>(books_smem + M * 256 * COPIES);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int slices = K / SLICE, tile0 = blockIdx.x * TILES;
#if EARLY  // the warp's first slice is requested before the codebook copy: the two latencies overlap
  Slice d;
  if (warp < slices) load_slice(d, codes, x, warp, rows, K, N, tile0, g, t);
#endif

  // The codebooks in the activations' type, 8 copies; a thread's 8 stores staggered over the bank quads.
  for (int e = threadIdx.x; e < M * 256; e += WARPS * 32) {
    uint4 v = make_uint4(0, 0, 0, 0);
    if (e % 256 < entries) {
      const uint4 h = reinterpret_cast<const uint4*>(codebooks)[(e / 256) * entries + e % 256];
#if BF16
      u32* w = &v.x;
      const u32* hw = &h.x;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        w[i] = (u32)f32_act(half_f32((u16)(hw[i] & 0xffff))) | (u32)f32_act(half_f32((u16)(hw[i] >> 16))) << 16;
#else
      v = h;
#endif
    }
#pragma unroll
    for (int i = 0; i < COPIES; ++i) books_smem[e * COPIES + (e + i) % COPIES] = v;
  }
  const u32 books = (u32)__cvta_generic_to_shared(books_smem) + 16 * (lane % COPIES);
  __syncthreads();

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
#pragma unroll
    for (int i = 0; i < TILES; ++i) {
#pragma unroll
      for (int p = 0; p < 8; ++p) {
        const uint4 wa = codeword_sum(d.ca[i], p, books), wb = codeword_sum(d.cb[i], p, books);
        mma16816(acc[i], wa.x, wb.x, wa.y, wb.y, d.xs[p].x, d.xs[p].y);  // inputs 0-3 of the group
        mma16816(acc[i], wa.z, wb.z, wa.w, wb.w, d.xs[p].z, d.xs[p].w);  // inputs 4-7
      }
    }
  }
#pragma unroll
  for (int i = 0; i < TILES; ++i)  // (output g, act 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)
#pragma unroll
    for (int e = 0; e < 4; ++e) red[warp][(i * 32 + lane) * 4 + e] = acc[i][e];
  __syncthreads();

  for (int v = threadIdx.x; v < NVALS; v += WARPS * 32) {
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) sum += red[w][v];
    const int e = v & 3, ln = (v >> 2) & 31, i = v >> 7;
    const int n = (tile0 + i) * 16 + (ln >> 2) + 8 * (e >> 1);
    const int m = 2 * (ln & 3) + (e & 1);
    if (m >= rows || n >= N) continue;
    sum *= half_f32(scales[n]);
    if (has_bias) sum += bias[n];
    y[(long long)m * N + n] = f32_act(sum);
  }
}
