// Compiled Verilator harness of spikesmith_core: streams image beats, takes results, writes them out.
//
//   harness JOB RESULTS [--seed S] [--valid P] [--ready P] [--timeout C] [--drain C]
//           [--waves FILE --wave-images N]
//
// Built by spikesmith.sim.harness (verilator --cc --exe --build) together with the emitted core;
// the Python side compares every result with the golden model. No Python in the clock loop.
//
// JOB (little-endian u32 words): "SPKJ", version 1, images, beats per image, words per beat,
// words per result, weight-load rows, words per weight-load row; then the beats (image-major) and
// the weights_load port values. RESULTS: one record per result taken, u32 image (0xffffffff: a
// result with no image in flight), u32 0, u64 cycle, then the result payload's words (LSB first).
// Every 256 results a count goes to stderr (progress); the last stdout line is a JSON summary:
// cycles, results, extra, timed_out. --wave-images N stops the waveform after N results (0: never).
//
// Each cycle: with the clock low, set images__valid/payload (a beat stays on offer until taken;
// a new one is offered with probability --valid) and results__ready (with probability --ready),
// evaluate, read the settled handshakes (the transfers the next rising edge makes), raise the clock.
// Verilator spells the ports' "__" as "___05F" (images__valid is images___05Fvalid).

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "verilated.h"
#include "Vspikesmith_core.h"
#if VM_TRACE_FST
#include "verilated_fst_c.h"
typedef VerilatedFstC Trace;
#elif VM_TRACE
#include "verilated_vcd_c.h"
typedef VerilatedVcdC Trace;
#endif

namespace {

const uint32_t JOB_MAGIC = 0x4a4b5053;      // "SPKJ"
const uint32_t NO_IMAGE = 0xffffffffu;
const int RESET_CYCLES = 3;

struct Job {
    uint32_t images = 0, beats = 0, beat_words = 0, result_words = 0, loads = 0, load_words = 0;
    std::vector<uint32_t> beat_data, load_data;
};

struct Settings {
    uint64_t seed = 0, timeout = 0, drain = 64, wave_images = 0;
    double valid = 1.0, ready = 1.0;
    std::string waves;
};

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "harness: %s\n", message.c_str());
    std::exit(2);
}

// splitmix64: a seeded, portable stream for the gaps and the backpressure.
struct Random {
    uint64_t state;
    explicit Random(uint64_t seed) : state(seed) {}
    uint64_t next() {
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    bool chance(double p) { return p >= 1.0 || (double)(next() >> 11) * 0x1.0p-53 < p; }
};

// Ports up to 64 bits are integers, wider ones VlWide<N>: one overload each.
template <typename T> void put(T& port, const uint32_t* words, uint32_t count) {
    uint64_t value = count > 0 ? words[0] : 0;
    if (count > 1) value |= (uint64_t)words[1] << 32;
    port = (T)value;
}
template <std::size_t N> void put(VlWide<N>& port, const uint32_t* words, uint32_t count) {
    for (std::size_t i = 0; i < N; i++) port[i] = i < count ? words[i] : 0;
}
template <typename T> void get(const T& port, uint32_t* words, uint32_t count) {
    uint64_t value = (uint64_t)port;
    for (uint32_t i = 0; i < count; i++) words[i] = i < 2 ? (uint32_t)(value >> (32 * i)) : 0;
}
template <std::size_t N> void get(const VlWide<N>& port, uint32_t* words, uint32_t count) {
    for (uint32_t i = 0; i < count; i++) words[i] = i < N ? port[i] : 0;
}

Job read_job(const char* path) {
    FILE* f = std::fopen(path, "rb");
    if (!f) fail(std::string("cannot open ") + path);
    uint32_t header[8];
    if (std::fread(header, 4, 8, f) != 8 || header[0] != JOB_MAGIC || header[1] != 1) fail("not a version-1 job file");
    Job job;
    job.images = header[2], job.beats = header[3], job.beat_words = header[4];
    job.result_words = header[5], job.loads = header[6], job.load_words = header[7];
    job.beat_data.resize((size_t)job.images * job.beats * job.beat_words);
    job.load_data.resize((size_t)job.loads * job.load_words);
    if (std::fread(job.beat_data.data(), 4, job.beat_data.size(), f) != job.beat_data.size()
        || std::fread(job.load_data.data(), 4, job.load_data.size(), f) != job.load_data.size())
        fail("the job file is truncated");
    std::fclose(f);
    return job;
}

Settings parse(int argc, char** argv) {
    Settings s;
    for (int i = 3; i + 1 < argc; i += 2) {
        std::string key = argv[i];
        const char* value = argv[i + 1];
        if (key == "--seed") s.seed = std::strtoull(value, nullptr, 10);
        else if (key == "--valid") s.valid = std::strtod(value, nullptr);
        else if (key == "--ready") s.ready = std::strtod(value, nullptr);
        else if (key == "--timeout") s.timeout = std::strtoull(value, nullptr, 10);
        else if (key == "--drain") s.drain = std::strtoull(value, nullptr, 10);
        else if (key == "--waves") s.waves = value;
        else if (key == "--wave-images") s.wave_images = std::strtoull(value, nullptr, 10);
        else fail("unknown option " + key);
    }
    return s;
}

class Bench {
public:
    Bench(VerilatedContext* context, const Settings& settings) : top(new Vspikesmith_core(context)), s(settings) {
#if VM_TRACE
        if (!s.waves.empty()) {
            context->traceEverOn(true);
            trace.reset(new Trace);
            top->trace(trace.get(), 99);
            trace->open(s.waves.c_str());
        }
#endif
    }
    ~Bench() {
#if VM_TRACE
        if (trace) trace->close();
#endif
        top->final();
    }

    // The clock is low: evaluate the inputs just set (and dump the falling half of the cycle).
    void settle() { top->clk = 0; top->eval(); dump(); }
    // Raise the clock: the transfers settled in settle() happen on this edge.
    void rise() { top->clk = 1; top->eval(); dump(); }

    void reset_and_load(const Job& job) {
        top->rst = 1, top->images___05Fvalid = 0, top->results___05Fready = 0;
        for (int i = 0; i < RESET_CYCLES; i++) settle(), rise();
        top->rst = 0;
#ifdef SPIKESMITH_WEIGHTS_LOAD
        for (uint32_t n = 0; n < job.loads; n++) {
            put(top->weights_load, &job.load_data[(size_t)n * job.load_words], job.load_words);
            settle(), rise();
        }
        uint32_t zero[8] = {0};
        put(top->weights_load, zero, 0);
#else
        if (job.loads) fail("this core has no weights_load port");
#endif
    }

    std::unique_ptr<Vspikesmith_core> top;
    void stop_tracing() {
#if VM_TRACE
        if (trace) trace->close(), trace.reset();
#endif
    }

private:
    void dump() {
#if VM_TRACE
        if (trace) trace->dump(time);
#endif
        time += 5;
    }
    const Settings& s;
    uint64_t time = 0;
#if VM_TRACE
    std::unique_ptr<Trace> trace;
#endif
};

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) fail("usage: harness JOB RESULTS [options]");
    const Job job = read_job(argv[1]);
    const Settings s = parse(argc, argv);
    FILE* out = std::fopen(argv[2], "wb");
    if (!out) fail(std::string("cannot write ") + argv[2]);
    auto context = std::make_unique<VerilatedContext>();
    Bench bench(context.get(), s);
    Vspikesmith_core& core = *bench.top;
    Random rng(s.seed);
    bench.reset_and_load(job);

    std::vector<uint32_t> record(4 + job.result_words);
    std::deque<uint32_t> outstanding;   // images fully sent, results not yet taken
    uint32_t image = 0, beat = 0;       // the next beat to offer
    bool offering = false;
    uint64_t cycle = 0, idle = 0, results = 0, extra = 0;
    while (image < job.images || !outstanding.empty() || idle < s.drain) {
        cycle++;
        if (!offering && image < job.images && rng.chance(s.valid)) {
            put(core.images___05Fpayload, &job.beat_data[((size_t)image * job.beats + beat) * job.beat_words],
                job.beat_words);
            offering = true;
        }
        core.images___05Fvalid = offering;
        const bool ready = (!outstanding.empty() || image < job.images) ? rng.chance(s.ready) : true;
        core.results___05Fready = ready;
        bench.settle();
        const bool took = offering && core.images___05Fready;
        const bool got = ready && core.results___05Fvalid;
        if (got) get(core.results___05Fpayload, &record[4], job.result_words);
        bench.rise();
        if (took) {
            offering = false;
            if (++beat == job.beats) outstanding.push_back(image++), beat = 0;
        }
        if (got) {
            uint32_t n = NO_IMAGE;
            if (outstanding.empty()) extra++, idle = 0;
            else n = outstanding.front(), outstanding.pop_front(), results++;
            record[0] = n, record[1] = 0;
            std::memcpy(&record[2], &cycle, 8);
            std::fwrite(record.data(), 4, record.size(), out);
            if (s.wave_images && results >= s.wave_images) bench.stop_tracing();
            if ((results & 255) == 0) std::fprintf(stderr, "%llu\n", (unsigned long long)results), std::fflush(stderr);
        }
        if (image == job.images && outstanding.empty()) idle++;
        if (s.timeout && cycle > s.timeout) break;
    }
    const bool timed_out = s.timeout && cycle > s.timeout;
    if (std::fclose(out) != 0) fail("cannot finish the results file");
    std::printf("{\"cycles\": %llu, \"results\": %llu, \"extra\": %llu, \"timed_out\": %s}\n",
                (unsigned long long)cycle, (unsigned long long)results, (unsigned long long)extra,
                timed_out ? "true" : "false");
    return 0;
}
