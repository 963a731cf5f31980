// The subcommands of `gemma`; each returns the process exit code.
#pragma once

namespace gemma {

int GenerateCommand(int argc, char** argv);
int ScoreCommand(int argc, char** argv);
int TokenizeCommand(int argc, char** argv);
int MakeTinyCommand(int argc, char** argv);
int QuantizeCommand(int argc, char** argv);
int CompareWeightsCommand(int argc, char** argv);
int KvCapacityCommand(int argc, char** argv);
int BenchCommand(int argc, char** argv);
int BenchCollectiveCommand(int argc, char** argv);
// `gemma bench --server`: load against a running router (services build only).
int BenchServerCommand(int argc, char** argv);
int ServeCommand(int argc, char** argv);
int ClientCommand(int argc, char** argv);

}  // namespace gemma
