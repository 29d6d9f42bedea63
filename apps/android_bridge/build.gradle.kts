// Android library module of the FUSION bridge (docs/android.md): the Java API in src/main/java
// and libfusion_edge_jni.so built by the project's top-level CMakeLists.txt through the NDK.
// NOT BUILT on this project's CI: there is no Android SDK/NDK there (the host build of the same
// sources is: -DFUSION_EDGE_JNI=ON, tests/test_android_bridge.py). Needs the llama.cpp sources
// of the llama-cpp-python version the bundles were verified with:
//   ./gradlew :fusion-edge:assembleRelease -PfusionLlamaSource=/path/llama_cpp_python-X/vendor/llama.cpp \
//       -PfusionNativeHeaders=/path/headers
plugins {
    id("com.android.library")
}

val llamaSource = providers.gradleProperty("fusionLlamaSource").orNull
    ?: error("pass -PfusionLlamaSource=<llama-cpp-python sdist>/vendor/llama.cpp (docs/android.md)")
// The header-only dependencies (nlohmann/json.hpp, stb/stb_image.h) in a folder of their own, never the
// host's /usr/include (its libc headers would shadow the NDK's): mkdir h && cp -r /usr/include/{nlohmann,stb} h
val headers = providers.gradleProperty("fusionNativeHeaders").orNull
    ?: error("pass -PfusionNativeHeaders=<folder with nlohmann/ and stb/> (docs/android.md)")

android {
    namespace = "ai.fusionedge"
    compileSdk = 34
    ndkVersion = "26.3.11579264"

    defaultConfig {
        minSdk = 28
        consumerProguardFiles("consumer-rules.pro")
        ndk {
            abiFilters += listOf("arm64-v8a")
        }
        externalNativeBuild {
            cmake {
                arguments += listOf(
                    "-DFUSION_EDGE_JNI=ON",
                    "-DFUSION_LLAMA_SOURCE=$llamaSource",
                    "-DGGML_OPENMP=OFF",
                    "-DANDROID_STL=c++_shared",
                    "-DNLOHMANN_JSON_INCLUDE_DIR=$headers",
                    "-DSTB_INCLUDE_DIR=$headers",
                )
                targets += listOf("fusion_edge_jni")
            }
        }
    }

    externalNativeBuild {
        cmake {
            path = file("../../CMakeLists.txt")
            version = "3.22.1"
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_11
        targetCompatibility = JavaVersion.VERSION_11
    }

    sourceSets["main"].java.srcDirs("src/main/java")
    // src/test/java holds the host test (run by CMake/CTest and pytest with a desktop JDK), not a Gradle unit test.
    sourceSets["test"].java.setSrcDirs(emptyList<String>())
}
